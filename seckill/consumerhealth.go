package seckill

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// consumerHealth is what the consumer's /readyz check reports. Its zero
// value is a consumer that has not joined its group yet.
type consumerHealth struct {
	mu        sync.Mutex
	inSession bool      // between Setup and Cleanup
	joined    bool      // a session was established once
	since     time.Time // when the last session ended
	joinErr   error     // of the last Consume; nil once a session starts
	storeErr  error     // of the last order that could not be stored nor dead-lettered
	fenced    bool      // another process took our instance id
	member    string    // the member id of the last session
}

func (h *consumerHealth) started(member string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inSession, h.joined, h.joinErr, h.member = true, true, nil, member
}

func (h *consumerHealth) memberID() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.member
}

func (h *consumerHealth) ended(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inSession, h.since = false, now
}

func (h *consumerHealth) joinFailed(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.joinErr = err
}

// stored records the outcome of handling one message (an uncontended
// lock per message: nothing next to a MySQL transaction).
func (h *consumerHealth) stored(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.storeErr = err
}

func (h *consumerHealth) fence() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fenced = true
}

func (h *consumerHealth) isFenced() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fenced
}

// errFenced: another consumer joined the group with this process's
// instance id; two live processes with one id would take the partitions
// from each other at every rejoin, so this one stops consuming.
var errFenced = errors.New("fenced: another consumer joined with this instance id (seckill.kafka.instance_id must be unique per process); this one stopped consuming")

// check fails when the consumer is fenced, when storing an order failed
// (until one is stored), when joining the group failed, before the first
// session, and when no session has been established for longer than
// grace. A rebalance ends every member's session at once and normally
// takes about a heartbeat interval: grace (the session timeout) keeps it
// from failing every replica's /readyz together.
func (h *consumerHealth) check(now time.Time, grace time.Duration) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.fenced:
		return errFenced
	case h.storeErr != nil:
		return fmt.Errorf("storing orders: %w", h.storeErr)
	case h.inSession:
		return nil
	case h.joinErr != nil:
		return fmt.Errorf("joining the group: %w", h.joinErr)
	case !h.joined:
		return errors.New("not in the group yet")
	case now.Sub(h.since) > grace:
		return fmt.Errorf("no group session for %s", now.Sub(h.since).Round(time.Millisecond))
	}
	return nil
}
