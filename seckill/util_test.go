package seckill_test

import (
	"bufio"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

func redisZ(score float64, member string) redis.Z { return redis.Z{Score: score, Member: member} }

// metric reads one sample from the daemon's /metrics (0 when absent).
func metric(t *testing.T, d *node, name string) float64 {
	t.Helper()
	r, err := call("GET", d.admin+"/metrics", "")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(r.Raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}
