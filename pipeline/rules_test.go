package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestRuleKinds: inserts, updates and deletes reach Redis through every
// rule kind, from the snapshot on and while streaming.
func TestRuleKinds(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	rules := e.itemRules()
	e.exec(itemsTable)
	// Rows present before the first start come from the snapshot.
	e.exec(`INSERT INTO items VALUES
		(1, 1, 'keyboard', 379.00, 10, 'on_sale', -128, 18446744073709551615, 0.5),
		(2, 1, NULL, 0.10, NULL, 'off', 127, NULL, NULL),
		(3, 2, 'quote " back\\slash nl\n é€', 19.90, 0, 'promo', 0, 0, -2.25)`)
	r := e.start(rules, nil)
	r.ready(t)
	e.sync(r)
	e.checkConsistent(rules, "items")
	p := e.p

	get := func(k string) (string, bool) {
		t.Helper()
		v, err := e.rdb.Get(ctx, k).Result()
		if errors.Is(err, redis.Nil) {
			return "", false
		}
		if err != nil {
			t.Fatal(err)
		}
		return v, true
	}
	members := func(k string) []string {
		t.Helper()
		m, err := e.rdb.SMembers(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(m)
		return m
	}
	wantJSON := func(id int, want string) {
		t.Helper()
		if got, _ := get(fmt.Sprintf("%sjson:%d", p, id)); got != want {
			t.Errorf("json:%d = %s\n\t\t\twant %s", id, got, want)
		}
	}
	wantHash := func(id int, want map[string]string) {
		t.Helper()
		got, err := e.rdb.HGetAll(ctx, fmt.Sprintf("%shash:%d", p, id)).Result()
		if err != nil || !mapsEqual(got, want) {
			t.Errorf("HGETALL hash:%d = %v (%v), want %v", id, got, err, want)
		}
	}
	wantMirror := func(id int, want string, exists bool) {
		t.Helper()
		got, ok := get(fmt.Sprintf("%sstock:%d", p, id))
		if ok != exists || got != want {
			t.Errorf("stock:%d = %q (exists %v), want %q (exists %v)", id, got, ok, want, exists)
		}
	}
	wantMembers := func(cat int, want ...string) {
		t.Helper()
		if got := members(fmt.Sprintf("%scat:%d", p, cat)); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("SMEMBERS cat:%d = %q, want %q", cat, got, want)
		}
	}
	// Exact renderings of the snapshot: integers of every width and
	// DECIMAL unquoted, text quoted and escaped, NULL as null.
	wantJSON(1, `{"id":1,"cat":1,"name":"keyboard","price":379.00,"stock":10,"status":"on_sale","qty":-128,"big":18446744073709551615,"ratio":0.5}`)
	wantJSON(2, `{"id":2,"cat":1,"name":null,"price":0.10,"stock":null,"status":"off","qty":127,"big":null,"ratio":null}`)
	wantJSON(3, `{"id":3,"cat":2,"name":"quote \" back\\slash nl\n é€","price":19.90,"stock":0,"status":"promo","qty":0,"big":0,"ratio":-2.25}`)
	wantHash(2, map[string]string{"id": "2", "price": "0.10"})
	wantMembers(1, "1")
	wantMembers(2, "3")

	// invalidate: the application cached some keys and holds a lease on
	// one; a change deletes the row's keys (before and after image) and
	// their leases, and nothing else.
	primeCache := func() {
		t.Helper()
		for _, k := range []string{"inv:1", "inv:2", "inv:3", "inv:4", "invcat:1", "invcat:2", "invcat:3"} {
			if err := e.rdb.Set(ctx, p+k, "cached", 0).Err(); err != nil {
				t.Fatal(err)
			}
			if err := e.rdb.Set(ctx, e.ks.Lease(p+k), "token", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantInvalidated := func(step string, gone ...string) {
		t.Helper()
		for _, k := range []string{"inv:1", "inv:2", "inv:3", "inv:4", "invcat:1", "invcat:2", "invcat:3"} {
			_, data := get(p + k)
			_, lease := get(e.ks.Lease(p + k))
			if slices.Contains(gone, k) && (data || lease) {
				t.Errorf("%s: %s (exists %v) or its lease (exists %v) survived", step, k, data, lease)
			}
			if !slices.Contains(gone, k) && (!data || !lease) {
				t.Errorf("%s: %s (exists %v) or its lease (exists %v) was deleted but is not the row's", step, k, data, lease)
			}
		}
	}

	// INSERT
	primeCache()
	e.exec(`INSERT INTO items VALUES (4, 3, 'mouse', 25.50, 7, 'promo', 5, 42, 1)`)
	e.sync(r)
	wantInvalidated("insert", "inv:4", "invcat:3")
	wantJSON(4, `{"id":4,"cat":3,"name":"mouse","price":25.50,"stock":7,"status":"promo","qty":5,"big":42,"ratio":1}`)
	wantHash(4, map[string]string{"id": "4", "name": "mouse", "price": "25.50", "stock": "7", "big": "42"})
	wantMirror(4, "7", true)
	wantMembers(3, "4")

	// UPDATE of values, to and from NULL
	primeCache()
	e.exec(`UPDATE items SET name = NULL, stock = NULL, price = 379.5 WHERE id = 1`)
	e.sync(r)
	wantInvalidated("update", "inv:1", "invcat:1")
	wantJSON(1, `{"id":1,"cat":1,"name":null,"price":379.50,"stock":null,"status":"on_sale","qty":-128,"big":18446744073709551615,"ratio":0.5}`)
	wantHash(1, map[string]string{"id": "1", "price": "379.50", "big": "18446744073709551615"})
	wantMirror(1, "", false) // NULL column: no mirror value
	e.exec(`UPDATE items SET stock = 11 WHERE id = 1`)
	e.sync(r)
	wantMirror(1, "11", true)

	// member: leaving the condition removes, entering it adds.
	e.exec(`UPDATE items SET status = 'off' WHERE id = 1`)
	e.sync(r)
	wantMembers(1)
	e.exec(`UPDATE items SET status = 'promo' WHERE id = 2`)
	e.sync(r)
	wantMembers(1, "2")
	e.exec(`UPDATE items SET status = 'on_sale' WHERE id = 2`) // still inside
	e.sync(r)
	wantMembers(1, "2")

	// member and invalidate: a key column change moves the member to
	// another set and invalidates both the old and the new key.
	primeCache()
	e.exec(`UPDATE items SET cat = 2 WHERE id = 2`)
	e.sync(r)
	wantInvalidated("key change", "inv:2", "invcat:1", "invcat:2")
	wantMembers(1)
	wantMembers(2, "2", "3")
	// A NULL key column names no set: the member leaves its set.
	e.exec(`UPDATE items SET cat = NULL WHERE id = 3`)
	e.sync(r)
	wantMembers(2, "2")
	if json, _ := get(p + "json:3"); !strings.Contains(json, `"cat":null`) {
		t.Errorf("json:3 = %s, want cat null", json)
	}

	// A change of the key column of rewrite/mirror keys moves them.
	e.exec(`UPDATE items SET id = 5 WHERE id = 4`)
	e.sync(r)
	if _, ok := get(p + "json:4"); ok {
		t.Error("json:4 survived its row's move to id 5")
	}
	wantJSON(5, `{"id":5,"cat":3,"name":"mouse","price":25.50,"stock":7,"status":"promo","qty":5,"big":42,"ratio":1}`)
	wantMirror(5, "7", true)
	wantMembers(3, "5")

	// DELETE: data keys gone. The rules keep no versions (not versioned):
	// no tombstones, and no version beside a live key.
	primeCache()
	e.exec(`DELETE FROM items WHERE id = 5`)
	e.sync(r)
	for _, k := range []string{"json:5", "hash:5", "stock:5"} {
		if v, ok := get(p + k); ok {
			t.Errorf("%s = %q after delete", k, v)
		}
	}
	wantMembers(3)
	wantInvalidated("delete", "invcat:3")
	// Every version key of this test: P+"v:"+K, on a cluster P+"v:{t}"+K.
	if vk, err := scanKeys(ctx, e.rdb, e.ks.Prefix+"v:*"); err != nil || len(vk) > 0 {
		t.Errorf("version keys %v (%v), want none", vk, err)
	}

	// Several changes in one transaction.
	e.tx(`INSERT INTO items VALUES (6, 4, 'six', 6, 6, 'on_sale', 6, 6, 6)`,
		`UPDATE items SET stock = 60 WHERE id = 6`,
		`INSERT INTO items VALUES (7, 4, 'seven', 7, 7, 'on_sale', 7, 7, 7)`,
		`DELETE FROM items WHERE id = 7`)
	e.sync(r)
	wantMirror(6, "60", true)
	wantMirror(7, "", false)
	wantMembers(4, "6")

	e.checkConsistent(rules, "items")
	if n := r.metric(t, "cachesync_redis_resets_total"); n != 0 {
		t.Errorf("%v resets", n)
	}
}
