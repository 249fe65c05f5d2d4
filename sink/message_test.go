package sink

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"slices"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// decodeKeys reads the keys of an invalidation message as a subscriber
// does: keys, then keys_b64 decoded.
func decodeKeys(t *testing.T, payload string) (seq int64, keys []string) {
	t.Helper()
	var msg struct {
		Seq     int64    `json:"seq"`
		Keys    []string `json:"keys"`
		KeysB64 []string `json:"keys_b64"`
	}
	if err := json.Unmarshal([]byte(payload), &msg); err != nil {
		t.Fatalf("message %q: %v", payload, err)
	}
	for _, k := range msg.KeysB64 {
		b, err := base64.StdEncoding.DecodeString(k)
		if err != nil {
			t.Fatalf("message %q: keys_b64 %q: %v", payload, k, err)
		}
		keys = append(keys, string(b))
	}
	return msg.Seq, append(msg.Keys, keys...)
}

func TestAppendKeys(t *testing.T) {
	for _, tc := range []struct {
		keys []string
		want string
	}{
		{[]string{"goods:1", "a\"b/ü😀"}, `"keys":["goods:1","a\"b/ü😀"]`},
		{[]string{"goods:1", "bin:\x00\xff", "goods:2"}, `"keys":["goods:1","goods:2"],"keys_b64":["YmluOgD/"]`},
		{[]string{"\xff"}, `"keys":[],"keys_b64":["/w=="]`},
		{[]string{"\xed\xa0\x80"}, `"keys":[],"keys_b64":["7aCA"]`}, // a surrogate half is not UTF-8
	} {
		if got := string(appendKeys(nil, tc.keys)); got != tc.want {
			t.Errorf("appendKeys(%q) = %s, want %s", tc.keys, got, tc.want)
		}
	}
}

// Every key, whatever its bytes, comes back exactly from the message.
func FuzzAppendKeys(f *testing.F) {
	f.Add("goods:1", "\x00\xff", "é")
	f.Add("", "\xed\xa0\x80", "a\"\\")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		keys := []string{a, b, c}
		payload := `{"seq":1,` + string(appendKeys(nil, keys)) + `}`
		if !json.Valid([]byte(payload)) {
			t.Fatalf("not valid JSON: %s", payload)
		}
		_, got := decodeKeys(t, payload)
		slices.Sort(got)
		slices.Sort(keys)
		if !slices.Equal(got, keys) {
			t.Fatalf("keys %q came back as %q from %s", keys, got, payload)
		}
	})
}

// A batch whose keys are all UTF-8 publishes the message as it always
// was; a key named by a binary column goes to keys_b64, exactly.
func TestInvalidationMessages(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	ctx := context.Background()
	sub := rdb.Subscribe(ctx, "inv:"+t.Name())
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	e := startApplier(t, rdb, Resume{},
		RuleConfig{Table: "shop.goods", Kind: KindInvalidate, Keys: []string{"g:{id}"}},
		RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: "n:{name}", Column: "stock"})
	next := func() string {
		t.Helper()
		m, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m.Payload
	}

	e.apply(txn(pos("binlog.000001", 100), ins(int64(1), "é/x", int64(5), "on")))
	if got, want := next(), `{"seq":1,"keys":["g:1","n:é/x"]}`; got != want {
		t.Errorf("message %s, want %s", got, want)
	}

	bin := []byte("\x00\xff\xc2\xaf\xb0E\x7f\xee")
	e.apply(txn(pos("binlog.000001", 200), ins(bin, bin, int64(6), "on")))
	payload := next()
	seq, keys := decodeKeys(t, payload)
	if want := []string{"g:" + string(bin), "n:" + string(bin)}; seq != 2 || !slices.Equal(keys, want) {
		t.Errorf("message %s names seq %d keys %q, want 2 %q", payload, seq, keys, want)
	}
	if v, ok := e.get("n:" + string(bin)); !ok || v != "6" {
		t.Errorf("key named by bytes holds %q (%v), want 6", v, ok)
	}
}
