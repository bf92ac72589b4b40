package relay_test

import "time"

// settle bounds waits for an event to travel from an insert to a client.
// Generous on purpose: a parallel test run on two cores can delay any step
// by seconds.
const settle = 30 * time.Second
