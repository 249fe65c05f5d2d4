package leader

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/rs/zerolog"
)

// TestTryTakeInspectSeize: a tool's TryTake does not take a held lease and
// names its holder, as Inspect does; Seize takes it with a larger token and
// the holder's term ends (ErrLost) at its next renewal; after the tool's
// Release the lease is free.
func TestTryTakeInspectSeize(t *testing.T) {
	rdb := newClient(t, testenv.StartRedis(t).Addr())
	cfg := testConfig("daemon")
	held := campaign(t, newLease(t, cfg, rdb, prefix(t), nil), 2*time.Second)

	toolCfg := testConfig("tool")
	el := New(toolCfg, rdb, keyspace.Keyspace{Prefix: prefix(t)}, zerolog.Nop(), nil)
	tool := el.Lease(leaseName)
	term, holder, err := tool.TryTake(t.Context())
	if err != nil || term != nil || holder != held.Value {
		t.Fatalf("TryTake of a held lease: %v, %q, %v; want no term and the holder's value %q", term, holder, err, held.Value)
	}
	h, err := el.Inspect(t.Context(), leaseName)
	if err != nil || h == nil || h.ID != "daemon" || h.Token != held.Token || h.Left <= 0 || h.Left > cfg.LeaseTTL {
		t.Fatalf("Inspect: %+v, %v; want daemon, token %d, 0 < left <= %s", h, err, held.Token, cfg.LeaseTTL)
	}

	seized, err := tool.Seize(t.Context())
	if err != nil || seized == nil {
		t.Fatalf("Seize: %v, %v", seized, err)
	}
	if seized.Token <= held.Token {
		t.Errorf("seized token %d, want more than the holder's %d", seized.Token, held.Token)
	}
	waitDone(t, held.Context(), 2*cfg.RenewInterval+slack, "lease seized")
	if cause := context.Cause(held.Context()); !errors.Is(cause, ErrLost) {
		t.Errorf("the holder's term ended with %v, want ErrLost", cause)
	}
	if h, err := el.Inspect(t.Context(), leaseName); err != nil || h == nil || h.ID != "tool" || h.Token != seized.Token {
		t.Errorf("Inspect after Seize: %+v, %v; want tool, token %d", h, err, seized.Token)
	}

	seized.Release()
	if h, err := el.Inspect(t.Context(), leaseName); err != nil || h != nil {
		t.Errorf("Inspect after Release: %+v, %v; want nobody", h, err)
	}
	term, _, err = tool.TryTake(t.Context())
	if err != nil || term == nil {
		t.Fatalf("TryTake of a free lease: %v, %v", term, err)
	}
	term.Release()
}
