package seckill

import (
	"encoding/json"
	"fmt"
	"time"
)

// message is an order on the Kafka topic, keyed by item id so one item's
// orders keep their order within a partition.
type message struct {
	Order      string `json:"order_id"`
	User       int64  `json:"user_id"`
	Item       int64  `json:"item_id"`
	ReservedMS int64  `json:"reserved_ms"`
}

func (m message) order() Order {
	return Order{ID: m.Order, User: m.User, Item: m.Item, ReservedAt: time.UnixMilli(m.ReservedMS).UTC()}
}

// decode parses and checks a message; an error here is permanent.
func decode(b []byte) (message, error) {
	var m message
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("order message: %w", err)
	}
	if item, ok := itemOfOrder(m.Order); !ok || item != m.Item {
		return m, fmt.Errorf("order message: order_id %q does not name item %d", m.Order, m.Item)
	}
	if m.User <= 0 || m.ReservedMS <= 0 {
		return m, fmt.Errorf("order message: user_id %d, reserved_ms %d: want positive", m.User, m.ReservedMS)
	}
	return m, nil
}
