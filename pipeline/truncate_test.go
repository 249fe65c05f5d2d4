package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// TestTruncate: TRUNCATE of a ruled table writes no row events; the sink
// deletes every key its rules wrote (invalidate keys the application
// filled included) and announces them, and rows inserted after it are
// applied as usual. Before, every key stayed.
func TestTruncate(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	rules := e.itemRules()
	e.exec(itemsTable)
	e.exec("INSERT INTO items (id, cat, name, price, stock, status) SELECT seq, seq % 7, CONCAT('item ', seq), seq, seq, 'on_sale' FROM seq_1_to_2500")
	r := e.start(rules, nil)
	r.ready(t)
	for id := 1; id <= 2500; id += 100 {
		e.rdb.Set(ctx, fmt.Sprintf("%sinv:%d", e.p, id), "filled", 0) // the application's cache
	}
	sub := e.rdb.Subscribe(ctx, e.chann)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	announced := map[string]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range sub.Channel() {
			var msg struct{ Keys []string }
			if json.Unmarshal([]byte(m.Payload), &msg) == nil {
				for _, k := range msg.Keys {
					announced[k] = true
				}
			}
		}
	}()

	e.exec("TRUNCATE TABLE items")
	e.exec("INSERT INTO items (id, cat, name, price, stock, status) VALUES (3000, 1, 'new', 1, 1, 'promo')")
	e.sync(r)
	e.checkConsistent(rules, "items")
	for id := 1; id <= 2500; id += 100 {
		k := fmt.Sprintf("%sinv:%d", e.p, id)
		if n := e.rdb.Exists(ctx, k).Val(); n != 0 {
			t.Errorf("%s survived the TRUNCATE", k)
		}
	}
	time.Sleep(200 * time.Millisecond) // the subscriber's last messages
	sub.Close()
	<-done
	for _, k := range []string{e.p + "inv:101", e.p + "json:1", e.p + "stock:2500", e.p + "cat:3"} {
		if !announced[k] {
			t.Errorf("%s deleted without an invalidation message", k)
		}
	}
}
