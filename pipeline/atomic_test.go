package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/sink"
)

// TestTransactionsAtomic: readers never see a transaction half-applied.
// Each transaction sets all 50 rows to one new value; readers MGET the 50
// mirror keys and must always find them equal.
//
// On a Redis Cluster each slot changes atomically, different slots do not
// change together, and one command reads one slot only. There the keys
// carry a hash tag of their row's group (m:{g}:id, 5 groups of 10 rows, in
// 5 slots): every transaction changes all 5 slots, and a reader MGETs one
// group at a time and must find its 10 keys equal.
func TestTransactionsAtomic(t *testing.T) {
	const rows, txns, readers = 50, 200, 4
	e := newEnv(t, nil, nil)
	e.exec("CREATE TABLE acc (id INT PRIMARY KEY, grp INT NOT NULL, v INT NOT NULL)")
	key, ngroups := e.p+"m:{id}", 1
	if e.ks.Cluster {
		key, ngroups = e.p+"m:{{{grp}}}:{id}", 5
	}
	var vals []string
	groups := make([][]string, ngroups) // keys read by one MGET
	slots := map[int]bool{}
	for i := range rows {
		id, g := i+1, (i+1)%ngroups
		vals = append(vals, fmt.Sprintf("(%d, %d, 0)", id, g))
		k := strings.NewReplacer("{{{grp}}}", "{"+strconv.Itoa(g)+"}", "{id}", strconv.Itoa(id)).Replace(key)
		groups[g] = append(groups[g], k)
		slots[keyspace.Slot(k)] = true
	}
	if e.ks.Cluster && len(slots) != ngroups {
		t.Fatalf("the %d groups of keys are in %d slots, want one slot each", ngroups, len(slots))
	}
	e.exec("INSERT INTO acc VALUES " + strings.Join(vals, ","))
	rules := []sink.RuleConfig{{Table: e.schema + ".acc", Kind: sink.KindMirror, Key: key, Column: "v"}}
	// A batch limit below the transaction size: a transaction is still
	// never cut by it.
	r := e.start(rules, func(_ *binlog.Config, s *sink.Config) { s.BatchChanges = 10 })
	r.ready(t)
	e.sync(r)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		reads, torn atomic.Int64
		mu          sync.Mutex
		seen        = map[string]bool{} // group=value
		firstTorn   string
		wg          sync.WaitGroup
	)
	for n := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := n; ctx.Err() == nil; i++ {
				g := i % ngroups
				vs, err := e.rdb.MGet(ctx, groups[g]...).Result()
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("MGET: %v", err)
					}
					return
				}
				reads.Add(1)
				ok := true
				for _, v := range vs {
					if v != vs[0] || v == nil {
						ok = false
					}
				}
				mu.Lock()
				if ok {
					seen[fmt.Sprintf("%d=%s", g, vs[0])] = true
				} else if torn.Add(1) == 1 {
					firstTorn = fmt.Sprint(vs)
				}
				mu.Unlock()
			}
		}()
	}

	rnd := rand.New(rand.NewPCG(7, 7))
	for i := 1; i <= txns; i++ {
		if i%2 == 0 {
			// one statement: one rows event of 50 rows
			e.exec(fmt.Sprintf("UPDATE acc SET v = %d", i))
		} else {
			// 50 statements, in random order: 50 rows events
			var qs []string
			for _, id := range rnd.Perm(rows) {
				qs = append(qs, fmt.Sprintf("UPDATE acc SET v = %d WHERE id = %d", i, id+1))
			}
			e.tx(qs...)
		}
	}
	e.sync(r)
	cancel()
	wg.Wait()

	if n := torn.Load(); n > 0 {
		t.Errorf("%d of %d reads saw a half-applied transaction, e.g. %s", n, reads.Load(), firstTorn)
	}
	t.Logf("%d reads saw %d distinct transaction states (of %d groups of keys)", reads.Load(), len(seen), ngroups)
	if reads.Load() < 100 || len(seen) < 10*ngroups {
		t.Errorf("readers did too little to prove anything: %d reads, %d distinct states of %d groups", reads.Load(), len(seen), ngroups)
	}
	for _, keys := range groups {
		vs, err := e.rdb.MGet(context.Background(), keys...).Result()
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vs {
			if v != strconv.Itoa(txns) {
				t.Errorf("%s = %v at the end, want %d", keys[i], v, txns)
			}
		}
	}
}

var wireFormat = regexp.MustCompile(`^\{"seq":[1-9][0-9]*,"keys":\["[^"]*"(,"[^"]*")*\]\}$`)

// TestInvalidationMessages: one message per applied batch, on the
// configured channel, as {"seq":N,"keys":[...]}, with seq rising by exactly
// one per message, and every invalidated key announced.
func TestInvalidationMessages(t *testing.T) {
	const n, txns = 100, 300
	e := newEnv(t, nil, nil)
	e.exec("CREATE TABLE inv (id INT PRIMARY KEY, v INT NOT NULL)")
	var vals []string
	for i := 1; i <= n; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 0)", i))
	}
	e.exec("INSERT INTO inv VALUES " + strings.Join(vals, ","))

	ctx := context.Background()
	sub := e.rdb.Subscribe(ctx, e.chann)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // subscription confirmed
		t.Fatal(err)
	}
	type msg struct {
		Seq  int64    `json:"seq"`
		Keys []string `json:"keys"`
	}
	var (
		mu   sync.Mutex
		msgs []msg
		bad  []string
	)
	go func() {
		for {
			m, err := sub.ReceiveMessage(ctx)
			if err != nil {
				return // closed
			}
			var x msg
			dec := json.NewDecoder(bytes.NewReader([]byte(m.Payload)))
			dec.DisallowUnknownFields()
			mu.Lock()
			if err := dec.Decode(&x); err != nil || !wireFormat.MatchString(m.Payload) || m.Channel != e.chann {
				bad = append(bad, fmt.Sprintf("%s: %q (%v)", m.Channel, m.Payload, err))
			}
			msgs = append(msgs, x)
			mu.Unlock()
		}
	}()

	rules := []sink.RuleConfig{{Table: e.schema + ".inv", Kind: sink.KindInvalidate, Keys: []string{e.p + "k:{id}", e.p + "all"}}}
	r := e.start(rules, nil)
	r.ready(t) // invalidate-only: streams from the current position, no snapshot

	touched := map[string]bool{e.p + "all": true}
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range txns {
		var qs []string
		for range 1 + rnd.IntN(3) {
			id := 1 + rnd.IntN(n)
			qs = append(qs, fmt.Sprintf("UPDATE inv SET v = %d WHERE id = %d", i+1, id))
			touched[fmt.Sprintf("%sk:%d", e.p, id)] = true
		}
		e.tx(qs...)
	}
	e.sync(r)
	last, err := e.rdb.Get(ctx, e.ks.Seq()).Int64()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() error {
		mu.Lock()
		defer mu.Unlock()
		if int64(len(msgs)) < last {
			return fmt.Errorf("%d messages received, seq counter is %d", len(msgs), last)
		}
		return nil
	}, 10*time.Second)

	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Errorf("malformed message %s", b)
	}
	announced := map[string]bool{}
	for i, m := range msgs {
		if m.Seq != int64(i+1) {
			t.Fatalf("message %d has seq %d, want %d (no gaps, no repeats)", i, m.Seq, i+1)
		}
		inMsg := map[string]bool{}
		for _, k := range m.Keys {
			if !touched[k] {
				t.Errorf("message %d announces %q, which no transaction touched", m.Seq, k)
			}
			if inMsg[k] {
				t.Errorf("message %d announces %q twice", m.Seq, k)
			}
			inMsg[k], announced[k] = true, true
		}
	}
	for k := range touched {
		if !announced[k] {
			t.Errorf("%s was invalidated but never announced", k)
		}
	}
	if int64(len(msgs)) != last {
		t.Errorf("%d messages, seq counter %d", len(msgs), last)
	}
	if len(msgs) > txns {
		t.Errorf("%d messages for %d transactions", len(msgs), txns)
	}
	t.Logf("%d transactions announced in %d messages", txns, len(msgs))
}
