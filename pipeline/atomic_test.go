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
	"github.com/cachesync/cachesync/sink"
)

// TestTransactionsAtomic: readers never see a transaction half-applied.
// Each transaction sets all 50 rows to one new value; readers MGET the 50
// mirror keys and must always find them equal.
func TestTransactionsAtomic(t *testing.T) {
	const rows, txns, readers = 50, 200, 4
	e := newEnv(t, nil, nil)
	e.exec("CREATE TABLE acc (id INT PRIMARY KEY, v INT NOT NULL)")
	var vals []string
	keys := make([]string, rows)
	for i := range rows {
		vals = append(vals, fmt.Sprintf("(%d, 0)", i+1))
		keys[i] = fmt.Sprintf("%sm:%d", e.p, i+1)
	}
	e.exec("INSERT INTO acc VALUES " + strings.Join(vals, ","))
	rules := []sink.RuleConfig{{Table: e.schema + ".acc", Kind: sink.KindMirror, Key: e.p + "m:{id}", Column: "v"}}
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
		seen        = map[string]bool{}
		firstTorn   string
		wg          sync.WaitGroup
	)
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				vs, err := e.rdb.MGet(ctx, keys...).Result()
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
					seen[vs[0].(string)] = true
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
	t.Logf("%d reads saw %d distinct transaction states", reads.Load(), len(seen))
	if reads.Load() < 100 || len(seen) < 10 {
		t.Errorf("readers did too little to prove anything: %d reads, %d distinct states", reads.Load(), len(seen))
	}
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
