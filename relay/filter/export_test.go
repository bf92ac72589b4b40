package filter

// Queued returns how many subscribers wait for a load that has not started.
func (b *Batcher) Queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, bt := range b.queue {
		n += len(bt.subscribers)
	}
	return n
}

// LoadsAtOnce is how many filter queries a Batcher runs at the same time.
const LoadsAtOnce = loadsAtOnce
