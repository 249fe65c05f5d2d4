package seckill

import (
	"strconv"
	"strings"
)

// Keys names an item's Redis keys. They share the hash tag {id}, so one
// Lua call may touch them all on Redis Cluster.
type Keys struct {
	Stock   string // MySQL's stock, kept by the CDC mirror rule
	Pending string // zset "order:user" → reserve time (ms): not yet in MySQL
	Buyers  string // hash user → order: one live reservation or order per user
	Ready   string // present once the item's keys were rebuilt from MySQL
}

// KeysFor returns the keys of item under prefix.
func KeysFor(prefix string, item int64) Keys {
	base := prefix + "{" + strconv.FormatInt(item, 10) + "}:"
	return Keys{Stock: base + "stock", Pending: base + "pending", Buyers: base + "buyers", Ready: base + "ready"}
}

// itemOfKey returns the item whose hash tag key carries, if key starts
// with prefix.
func itemOfKey(prefix, key string) (int64, bool) {
	rest, ok := strings.CutPrefix(key, prefix+"{")
	if !ok {
		return 0, false
	}
	id, _, ok := strings.Cut(rest, "}")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(id, 10, 64)
	return n, err == nil
}

// parseMember splits a pending entry.
func parseMember(m string) (order string, user int64, ok bool) {
	i := strings.LastIndexByte(m, ':')
	if i <= 0 {
		return "", 0, false
	}
	u, err := strconv.ParseInt(m[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return m[:i], u, true
}

// itemOfOrder reads the item from an order id "<item>-<uuid>".
func itemOfOrder(order string) (int64, bool) {
	id, rest, ok := strings.Cut(order, "-")
	if !ok || len(rest) != 36 {
		return 0, false
	}
	n, err := strconv.ParseInt(id, 10, 64)
	return n, err == nil && n > 0
}
