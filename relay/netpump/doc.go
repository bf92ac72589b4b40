// Package netpump holds what serving many mostly idle connections from a few
// goroutines takes, for the transports that do it (SSE and WebSocket): an
// epoll set that reports connections whose clients sent something or hung
// up, reads and writes that never wait, a writer that gathers small frames
// and never copies large ones, and a wheel that spreads heartbeats over
// their interval.
//
// A goroutine per connection would cost its stack, and a library's buffers
// per connection their heap, for every idle stream: tens of kilobytes each,
// and work for the garbage collector on every cycle. What is here keeps an
// idle connection down to its socket and a few small structs.
package netpump
