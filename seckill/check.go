package seckill

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/redis/go-redis/v9"
)

// Drift is one disagreement between Redis and MySQL about an item.
type Drift struct {
	Item   int64  `json:"item_id"`
	Kind   string `json:"kind"` // stock, pending, orphan, buyer_extra, buyer_missing, not_ready
	Detail string `json:"detail"`
	Redis  string `json:"redis"`
	MySQL  string `json:"mysql"`
}

func (d Drift) key() string { return fmt.Sprintf("%d/%s/%s", d.Item, d.Kind, d.Detail) }

// Checker compares Redis with MySQL at a consistent cut: it reads MySQL in
// one snapshot at binlog version V, waits until CDC has applied V (the
// checkpoint moves once every slot has the batch), then reads the item's
// keys in one atomic step. A
// difference that can be explained by a change after V (the stock key was
// rewritten after V, an order moved on) is not drift; only differences
// seen in every one of Rounds rounds are reported.
type Checker struct {
	cfg    Config
	ks     keyspace.Keyspace
	rdb    redis.UniversalClient
	db     *sql.DB
	store  *Store
	Rounds int
	Pause  time.Duration
	// Wait bounds the wait for CDC to reach a snapshot's position.
	Wait time.Duration
	now  func() time.Time
}

// NewChecker returns a checker with 3 rounds 200 ms apart.
func NewChecker(cfg Config, ks keyspace.Keyspace, rdb redis.UniversalClient, db *sql.DB, store *Store) *Checker {
	return &Checker{cfg: cfg, ks: ks, rdb: rdb, db: db, store: store, Rounds: 3, Pause: 200 * time.Millisecond, Wait: 30 * time.Second, now: time.Now}
}

// Result of a check: per item, the state seen in the last round, and the
// drift that persisted.
type Result struct {
	Items []ItemReport `json:"items"`
	Drift []Drift      `json:"drift"`
}

// ItemReport summarises one item as seen in the last round.
type ItemReport struct {
	Item         int64 `json:"item_id"`
	MySQLStock   int64 `json:"mysql_stock"`
	RedisStock   int64 `json:"redis_stock"`
	Pending      int   `json:"pending"`
	Buyers       int   `json:"buyers"`
	LiveOrders   int   `json:"live_orders"`
	Available    int64 `json:"available"`
	Ready        bool  `json:"ready"`
	Inconclusive bool  `json:"inconclusive"` // the stock changed after the snapshot in every round
}

// Check compares items (every item in MySQL when empty).
func (c *Checker) Check(ctx context.Context, items []int64) (Result, error) {
	var err error
	if len(items) == 0 {
		if items, err = c.store.Items(ctx); err != nil {
			return Result{}, err
		}
	}
	seen := map[string]int{}
	var last []Drift
	var res Result
	for round := 0; round < c.Rounds; round++ {
		if round > 0 {
			select {
			case <-ctx.Done():
				return Result{}, ctx.Err()
			case <-time.After(c.Pause):
			}
		}
		res.Items = res.Items[:0]
		last = last[:0]
		for _, item := range items {
			rep, ds, err := c.checkItem(ctx, item)
			if err != nil {
				return Result{}, fmt.Errorf("check item %d: %w", item, err)
			}
			res.Items = append(res.Items, rep)
			for _, d := range ds {
				seen[d.key()]++
				last = append(last, d)
			}
		}
	}
	for _, d := range last {
		if seen[d.key()] == c.Rounds {
			res.Drift = append(res.Drift, d)
		}
	}
	return res, nil
}

func (c *Checker) checkItem(ctx context.Context, item int64) (ItemReport, []Drift, error) {
	rep := ItemReport{Item: item}
	k := KeysFor(c.cfg.KeyPrefix, item)
	var st ItemState
	var orders []string
	pos, err := binlog.ReadConsistent(ctx, c.db, func(conn *sql.Conn, _ binlog.Position) error {
		var err error
		st, err = c.store.readItem(ctx, conn, item, nil)
		if err != nil {
			return err
		}
		rows, err := conn.QueryContext(ctx, "SELECT order_id FROM "+c.store.orders+" WHERE item_id = ?", item)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var o string
			if err := rows.Scan(&o); err != nil {
				return err
			}
			orders = append(orders, o)
		}
		return rows.Err()
	})
	if err != nil {
		return rep, nil, err
	}
	for _, o := range orders {
		st.Orders[o] = true
	}
	ver, err := pos.Version()
	if err != nil {
		return rep, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, c.Wait)
	defer cancel()
	if err := waitCheckpoint(wctx, c.rdb, c.ks, ver); err != nil {
		return rep, nil, err
	}
	raw, err := inspectScript.Run(ctx, c.rdb, []string{k.Stock, c.ks.Version(k.Stock), k.Pending, k.Buyers, k.Ready, k.Outbox}).Slice()
	if err != nil {
		return rep, nil, err
	}
	stock, hasStock := raw[0].(string)
	stockVer, _ := raw[1].(string)
	pending, _ := raw[2].([]any)
	buyers, _ := raw[3].([]any)
	ready, _ := raw[4].(int64)
	queued := map[string]bool{} // orders waiting in the outbox for Kafka: not orphans
	if len(raw) > 5 {
		ids, _ := raw[5].([]any)
		for _, id := range ids {
			o, _ := id.(string)
			queued[o] = true
		}
	}
	rep.MySQLStock, rep.Ready, rep.LiveOrders = st.Stock, ready == 1, len(st.Live)
	rep.Pending, rep.Buyers = len(pending)/2, len(buyers)/2

	var ds []Drift
	add := func(kind, detail, r, m string) {
		ds = append(ds, Drift{Item: item, Kind: kind, Detail: detail, Redis: r, MySQL: m})
	}
	if !rep.Ready {
		add("not_ready", "", "no ready marker", "")
	}
	rs, _ := strconv.ParseInt(stock, 10, 64)
	rep.RedisStock = rs
	rep.Available = rs - int64(rep.Pending)
	sv, _ := strconv.ParseUint(stockVer, 10, 64)
	switch {
	case !hasStock:
		add("stock", "", "missing", strconv.FormatInt(st.Stock, 10))
	case sv > ver:
		rep.Inconclusive = true // rewritten after the snapshot: compared next round
	case rs != st.Stock:
		add("stock", "", stock, strconv.FormatInt(st.Stock, 10))
	}
	inFlight := map[int64]string{} // user → order of reservations without a row
	orphanBefore := c.now().Add(-c.cfg.OrphanAge).UnixMilli()
	for i := 0; i+1 < len(pending); i += 2 {
		m, _ := pending[i].(string)
		score, _ := pending[i+1].(string)
		o, u, ok := parseMember(m)
		if !ok {
			add("pending", m, "unparsable member", "")
			continue
		}
		if st.Orders[o] {
			add("pending", m, "pending", "order stored")
			continue
		}
		inFlight[u] = o
		if ms, _ := strconv.ParseFloat(score, 64); int64(ms) < orphanBefore && !queued[o] {
			add("orphan", m, "pending since "+time.UnixMilli(int64(ms)).UTC().Format(time.RFC3339), "no order")
		}
	}
	have := map[int64]string{}
	for i := 0; i+1 < len(buyers); i += 2 {
		us, _ := buyers[i].(string)
		o, _ := buyers[i+1].(string)
		u, _ := strconv.ParseInt(us, 10, 64)
		have[u] = o
		if st.Live[u] != o && inFlight[u] != o {
			add("buyer_extra", us, o, describe(st.Live[u]))
		}
	}
	for u, o := range st.Live {
		if have[u] != o {
			add("buyer_missing", strconv.FormatInt(u, 10), describe(have[u]), o)
		}
	}
	// A reservation in flight holds its user in buyers (reserve.lua writes
	// both, every script and CDC batch that removes one removes the
	// other); without it the user could reserve the item again.
	for u, o := range inFlight {
		if _, live := st.Live[u]; !live && have[u] != o {
			add("buyer_missing", strconv.FormatInt(u, 10), describe(have[u]), "in flight: "+o)
		}
	}
	return rep, ds, nil
}

func describe(order string) string {
	if order == "" {
		return "none"
	}
	return order
}

// Format renders a result as a table.
func (r Result) Format() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %11s %11s %8s %8s %8s %10s %6s\n", "ITEM", "MYSQL_STOCK", "REDIS_STOCK", "PENDING", "BUYERS", "LIVE", "AVAILABLE", "READY")
	for _, it := range r.Items {
		rs := strconv.FormatInt(it.RedisStock, 10)
		if it.Inconclusive {
			rs += "*"
		}
		fmt.Fprintf(&b, "%-8d %11d %11s %8d %8d %8d %10d %6t\n", it.Item, it.MySQLStock, rs, it.Pending, it.Buyers, it.LiveOrders, it.Available, it.Ready)
	}
	if len(r.Drift) == 0 {
		b.WriteString("no drift\n")
		return b.String()
	}
	sort.Slice(r.Drift, func(i, j int) bool { return r.Drift[i].key() < r.Drift[j].key() })
	fmt.Fprintf(&b, "\nDRIFT (persisted across every round):\n%-8s %-14s %-50s %-24s %s\n", "ITEM", "KIND", "DETAIL", "REDIS", "MYSQL")
	for _, d := range r.Drift {
		fmt.Fprintf(&b, "%-8d %-14s %-50s %-24s %s\n", d.Item, d.Kind, d.Detail, d.Redis, d.MySQL)
	}
	return b.String()
}
