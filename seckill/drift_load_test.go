package seckill_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/seckill"
)

// TestDriftNoFalseAlarmsUnderLoad: a healthy sale under load — 32 workers
// reserving three items (stock 2,000, 2,000 and 50: the last sells out,
// and cancels reopen it) with distinct users for 8 s, a quarter of the
// orders paid, the rest canceled by a 1.5 s unpaid timeout while the load
// runs, an admin restock of +500 on every item midway —
// while a Checker runs Check in a loop. Every check reports no drift, and
// every item report is sane (a stock read before anything newer was
// applied equals MySQL's; 0 <= available <= Redis stock). After
// quiescence a final check is clean with available == MySQL stock and
// buyers == live orders, and MySQL's books balance: stock + live orders
// == initial stock + restock for each item.
func TestDriftNoFalseAlarmsUnderLoad(t *testing.T) {
	const (
		items    = 3
		restock  = 500
		workers  = 32
		duration = 8 * time.Second
	)
	stock := [items]int64{2000, 2000, 50} // items 41, 42, 43
	s := newStack(t)
	d := s.start("unpaid_timeout: 1500ms\nadmin_token: " + adminToken)
	for i := int64(0); i < items; i++ {
		s.addItem(41+i, stock[i])
	}
	k := newDriftKit(t, s, d)

	// The checker, until the load ends.
	ctx, stopChecks := context.WithCancel(context.Background())
	defer stopChecks()
	var (
		results    []seckill.Result
		checkErr   error
		checksDone = make(chan struct{})
	)
	go func() {
		defer close(checksDone)
		for ctx.Err() == nil {
			res, err := k.ck.Check(ctx, nil)
			if err != nil {
				if ctx.Err() == nil {
					checkErr = err
				}
				return
			}
			results = append(results, res)
		}
	}()

	// The load.
	deadline := time.Now().Add(duration)
	var (
		mu        sync.Mutex
		codes     = map[int]int{}
		accepted  atomic.Int64
		paid      atomic.Int64
		payErrors atomic.Int64
		wg        sync.WaitGroup
	)
	toPay := make(chan string, 100_000)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); time.Now().Before(deadline); i++ {
				user := int64(w+1)*1_000_000 + i
				r, err := d.reserve(41+i%items, user)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				codes[r.Status]++
				mu.Unlock()
				if r.Status == 202 {
					if accepted.Add(1)%4 == 0 {
						toPay <- r.Body["order_id"].(string)
					}
				}
			}
		}()
	}
	var payers sync.WaitGroup
	for p := 0; p < 4; p++ {
		payers.Add(1)
		go func() {
			defer payers.Done()
			for o := range toPay {
				for {
					r, err := call("POST", d.base+"/orders/"+o+"/pay", "")
					if err != nil {
						payErrors.Add(1)
						break
					}
					if r.Status == 200 {
						paid.Add(1)
						break
					}
					if r.Status == 409 && r.Body["error"] == "order not stored yet (queued) or unknown: retry shortly" {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					break // canceled (or failed) before it was paid
				}
			}
		}()
	}
	time.Sleep(duration / 2)
	for i := int64(0); i < items; i++ {
		r, err := call("POST", fmt.Sprintf("%s/admin/items/%d/restock", d.admin, 41+i), fmt.Sprintf(`{"add":%d}`, restock), "Authorization", "Bearer "+adminToken)
		if err != nil || r.Status != 200 {
			t.Fatalf("restock item %d: %v %d %s", 41+i, err, r.Status, r.Raw)
		}
	}
	wg.Wait()
	close(toPay)
	payers.Wait()
	canceledDuringLoad := s.int("SELECT COUNT(*) FROM sk_orders WHERE status = 'canceled'")
	stopChecks()
	<-checksDone

	t.Logf("answers %v; %d accepted, %d paid (%d pay errors), %d canceled during the load; %d checks during the load",
		codes, accepted.Load(), paid.Load(), payErrors.Load(), canceledDuringLoad, len(results))
	if checkErr != nil {
		t.Fatalf("check during the load: %v", checkErr)
	}
	for code, n := range codes {
		if code != 202 && code != 410 {
			t.Errorf("%d answers %d during a healthy sale", n, code)
		}
	}
	if accepted.Load() < 1000 || paid.Load() == 0 || canceledDuringLoad == 0 || codes[410] == 0 {
		t.Errorf("load too light to mean anything: %d accepted, %d paid, %d canceled, %d sold out", accepted.Load(), paid.Load(), canceledDuringLoad, codes[410])
	}
	if len(results) < 3 {
		t.Errorf("only %d checks completed during the load", len(results))
	}
	conclusive := 0
	for i, res := range results {
		if len(res.Drift) > 0 {
			t.Errorf("check %d during the load reported drift (false alarm):\n%s", i, res.Format())
		}
		for _, r := range res.Items {
			if !r.Inconclusive {
				conclusive++
				if r.RedisStock != r.MySQLStock {
					t.Errorf("check %d: item %d: Redis stock %d, MySQL %d, and not rewritten after the snapshot", i, r.Item, r.RedisStock, r.MySQLStock)
				}
			}
			if r.Available < 0 || r.Available > r.RedisStock || !r.Ready {
				t.Errorf("check %d: insane report %+v", i, r)
			}
		}
	}
	t.Logf("%d item reports compared the stock, %d were inconclusive", conclusive, len(results)*items-conclusive)

	// Quiescence: every order stored, every unpaid one canceled, CDC done.
	bg := context.Background()
	driftEventually(t, 60*time.Second, "every reservation stored and every unpaid order canceled", func() bool {
		for i := int64(0); i < items; i++ {
			if s.rdb.ZCard(bg, fmt.Sprintf("sk:{%d}:pending", 41+i)).Val() != 0 {
				return false
			}
		}
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE status = 'created'") == 0 &&
			s.int("SELECT COUNT(*) FROM sk_orders") == accepted.Load()
	})
	res := k.check(t)
	driftExpect(t, res)
	for i := int64(0); i < items; i++ {
		item := 41 + i
		r := driftReport(t, res, item)
		live := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status IN ('created', 'paid')", item)
		mysqlStock := s.int("SELECT stock FROM sk_items WHERE id = ?", item)
		if r.Pending != 0 || r.MySQLStock != mysqlStock || r.RedisStock != mysqlStock || r.Available != mysqlStock ||
			int64(r.LiveOrders) != live || int64(r.Buyers) != live || !r.Ready || r.Inconclusive {
			t.Errorf("item %d after quiescence: %+v (MySQL stock %d, %d live orders)", item, r, mysqlStock, live)
		}
		if mysqlStock+live != stock[i]+restock {
			t.Errorf("item %d: stock %d + %d live orders != %d", item, mysqlStock, live, stock[i]+restock)
		}
	}
}

// TestDriftPeriodicCheckMetric: with check_interval set, the daemon checks
// by itself and publishes cachesync_seckill_drift{kind} on /metrics: 0
// while healthy, 1 once a wrong stock (and a bogus buyer) persists, and 0
// again after a resync.
func TestDriftPeriodicCheckMetric(t *testing.T) {
	s := newStack(t)
	d := s.start("check_interval: 300ms")
	s.addItem(51, 5)
	const (
		stockDrift = `cachesync_seckill_drift{kind="stock"}`
		buyerDrift = `cachesync_seckill_drift{kind="buyer_extra"}`
		checks     = `cachesync_seckill_drift_checks_total`
	)
	base := metric(t, d, checks)
	s.eventually(30*time.Second, "two more periodic checks", func() bool { return metric(t, d, checks) >= base+2 })
	if v, b := metric(t, d, stockDrift), metric(t, d, buyerDrift); v != 0 || b != 0 {
		t.Fatalf("healthy item: drift{stock} = %v, drift{buyer_extra} = %v", v, b)
	}

	ctx := context.Background()
	s.rdb.Set(ctx, "sk:{51}:stock", 9, 0)
	s.rdb.HSet(ctx, "sk:{51}:buyers", "999", "51-0190f0e0-0000-7000-8000-000000000999")
	start := time.Now()
	s.eventually(30*time.Second, stockDrift+" = 1 and "+buyerDrift+" = 1", func() bool {
		return metric(t, d, stockDrift) == 1 && metric(t, d, buyerDrift) == 1
	})
	t.Logf("drift on /metrics %s after the injection", time.Since(start).Round(time.Millisecond))
	if v := metric(t, d, `cachesync_seckill_drift{kind="pending"}`); v != 0 {
		t.Errorf(`drift{kind="pending"} = %v`, v)
	}

	k := newDriftKit(t, s, d)
	k.rebuild(t, 51)
	s.eventually(30*time.Second, "drift gauges back to 0", func() bool {
		return metric(t, d, stockDrift) == 0 && metric(t, d, buyerDrift) == 0
	})
	if v, _ := s.rdb.Get(ctx, "sk:{51}:stock").Int64(); v != 5 {
		t.Errorf("Redis stock %d after the resync, want 5", v)
	}
}
