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
	// Outbox is a hash order → Kafka message of the reservations whose
	// message Kafka has not acknowledged yet (see outbox.go).
	Outbox string
}

// KeysFor returns the keys of item under prefix.
func KeysFor(prefix string, item int64) Keys {
	base := prefix + "{" + strconv.FormatInt(item, 10) + "}:"
	return Keys{Stock: base + "stock", Pending: base + "pending", Buyers: base + "buyers", Ready: base + "ready", Outbox: base + "outbox"}
}

// ItemsKey is the set of the sale's item ids (sk_items.id), kept by a CDC
// member rule (Config.CheckRules): an id outside it is no sale item, once
// the set is complete (see knownItems).
func ItemsKey(prefix string) string { return prefix + "items" }

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

// member is a pending entry: the order and the user who reserved it (as
// reserve.lua writes it).
func member(order string, user int64) string {
	return order + ":" + strconv.FormatInt(user, 10)
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

// parseOrderID checks an order id from a client against the exact form
// Reserve makes, "<item>-<UUIDv7>": the item a positive decimal without
// sign or leading zero, the UUID in lowercase 8-4-4-4-12 hex with version
// 7 and the RFC 9562 variant. Nothing else reaches SQL or Redis, so no
// glob character can reach a MATCH pattern.
func parseOrderID(id string) (int64, bool) {
	item, u, ok := strings.Cut(id, "-")
	if !ok || item == "" || len(item) > 19 || item[0] == '0' || len(u) != 36 {
		return 0, false
	}
	for i := 0; i < len(item); i++ {
		if item[i] < '0' || item[i] > '9' {
			return 0, false
		}
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return 0, false
			}
		case 14: // version
			if c != '7' {
				return 0, false
			}
		case 19: // variant 10xx
			if c != '8' && c != '9' && c != 'a' && c != 'b' {
				return 0, false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return 0, false
			}
		}
	}
	n, err := strconv.ParseInt(item, 10, 64)
	return n, err == nil
}
