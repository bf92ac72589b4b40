package relay_test

import "time"

// settle bounds waits for an event to travel from an insert to a client.
// Generous on purpose: readers only pass transactions below the cluster-wide
// snapshot xmin, so under a parallel test run a long transaction in another
// test's database delays every relay.
const settle = 30 * time.Second
