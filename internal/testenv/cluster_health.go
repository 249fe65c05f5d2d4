package testenv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WaitHealthy blocks until the cluster is in working order with the
// nodes that run now: every running node says cluster_state:ok with
// 16384 slots assigned and ok, every one names the same master and
// replicas for each slot range (CLUSTER NODES), that master runs and
// answers ROLE master, every replica named runs and replicates it with
// master_link_status:up, and every running node is named. After
// KillMaster that takes about ClusterNodeTimeout plus a second or two
// (failure detection, then the replica's election); a killed node
// started again must have rejoined too. It returns ctx's error joined
// with the last unmet condition if ctx ends first.
func (c *RedisCluster) WaitHealthy(ctx context.Context) error {
	return WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		_, err := c.healthy(ctx)
		return err
	})
}

// slotRange is one range of CLUSTER SLOTS, its nodes resolved.
type slotRange struct {
	start, end int
	master     *Redis
	replicas   []*Redis
}

// clusterView is the slot ranges all running nodes agree on, by start.
type clusterView []slotRange

// String lists the ranges with the addresses of their master and replicas.
func (v clusterView) String() string {
	var b strings.Builder
	for _, r := range v {
		fmt.Fprintf(&b, "[%d-%d %s", r.start, r.end, r.master.Addr())
		for _, rep := range r.replicas {
			b.WriteString(" " + rep.Addr())
		}
		b.WriteString("]")
	}
	return b.String()
}

// healthy checks the conditions of WaitHealthy once and returns the view.
func (c *RedisCluster) healthy(ctx context.Context) (clusterView, error) {
	var (
		view  clusterView
		first *Redis
	)
	for _, n := range c.nodes {
		if n.PID() == 0 {
			continue
		}
		info, err := nodeDo(ctx, c.tls, n.Addr(), "CLUSTER", "INFO").Text()
		if err != nil {
			return nil, fmt.Errorf("%s: CLUSTER INFO: %w", n.Addr(), err)
		}
		f := fields(info)
		want := strconv.Itoa(clusterSlots)
		if f["cluster_state"] != "ok" || f["cluster_slots_assigned"] != want || f["cluster_slots_ok"] != want {
			return nil, fmt.Errorf("%s: cluster_state:%s, cluster_slots_assigned:%s, cluster_slots_ok:%s",
				n.Addr(), f["cluster_state"], f["cluster_slots_assigned"], f["cluster_slots_ok"])
		}
		v, err := c.view(ctx, n)
		if err != nil {
			return nil, err
		}
		if first == nil {
			view, first = v, n
		} else if v.String() != view.String() {
			return nil, fmt.Errorf("%s sees %s, %s sees %s", n.Addr(), v, first.Addr(), view)
		}
	}
	if first == nil {
		return nil, errors.New("no node is running")
	}
	named := map[*Redis]bool{}
	for _, r := range view {
		named[r.master] = true
		if r.master.PID() == 0 {
			return nil, fmt.Errorf("slots %d-%d: master %s is not running", r.start, r.end, r.master.Addr())
		}
		role, err := nodeRole(ctx, c.tls, r.master.Addr())
		if err != nil {
			return nil, err
		}
		if role != "master" {
			return nil, fmt.Errorf("slots %d-%d: master %s answers ROLE %s", r.start, r.end, r.master.Addr(), role)
		}
		for _, rep := range r.replicas {
			named[rep] = true
			if rep.PID() == 0 {
				return nil, fmt.Errorf("slots %d-%d: replica %s is not running", r.start, r.end, rep.Addr())
			}
			if err := replicating(ctx, c.tls, rep.Addr(), r.master.Addr()); err != nil {
				return nil, err
			}
		}
	}
	for _, n := range c.nodes {
		if n.PID() != 0 && !named[n] {
			return nil, fmt.Errorf("%s runs but serves no slots and replicates no master that does", n.Addr())
		}
	}
	return view, nil
}

// view reads CLUSTER NODES from node n: the ranges of slots each master
// serves, with the replicas that replicate it, leaving out the nodes n
// flags as failing (fail or pfail). (CLUSTER SLOTS would leave out a
// replica until its replication offset is above 0, which takes up to
// repl-ping-replica-period, 10 s, on an idle cluster.)
func (c *RedisCluster) view(ctx context.Context, n *Redis) (clusterView, error) {
	text, err := nodeDo(ctx, c.tls, n.Addr(), "CLUSTER", "NODES").Text()
	if err != nil {
		return nil, fmt.Errorf("%s: CLUSTER NODES: %w", n.Addr(), err)
	}
	type entry struct {
		node   *Redis
		slave  bool
		master string // id
		slots  []string
	}
	var entries []entry
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		node := c.ids[f[0]]
		if node == nil {
			return nil, fmt.Errorf("%s: CLUSTER NODES names node %s (%s), not one of this cluster", n.Addr(), f[0], f[1])
		}
		flags := strings.Split(f[2], ",")
		if slices.Contains(flags, "handshake") || slices.Contains(flags, "noaddr") {
			return nil, fmt.Errorf("%s: CLUSTER NODES: %s has flags %s", n.Addr(), node.Addr(), f[2])
		}
		if slices.Contains(flags, "fail") || slices.Contains(flags, "fail?") {
			continue
		}
		entries = append(entries, entry{node: node, slave: slices.Contains(flags, "slave"), master: f[3], slots: f[8:]})
	}
	var v clusterView
	for _, e := range entries {
		if e.slave {
			continue
		}
		var replicas []*Redis
		for _, r := range entries {
			if r.slave && c.ids[r.master] == e.node {
				replicas = append(replicas, r.node)
			}
		}
		slices.SortFunc(replicas, func(a, b *Redis) int { return a.Port - b.Port })
		for _, s := range e.slots {
			if strings.HasPrefix(s, "[") {
				continue // a slot migrating or importing
			}
			lo, hi, ok := strings.Cut(s, "-")
			if !ok {
				hi = lo
			}
			start, err1 := strconv.Atoi(lo)
			end, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("%s: CLUSTER NODES: %s serves slots %q", n.Addr(), e.node.Addr(), s)
			}
			v = append(v, slotRange{start: start, end: end, master: e.node, replicas: replicas})
		}
	}
	slices.SortFunc(v, func(a, b slotRange) int { return a.start - b.start })
	return v, nil
}

// fields parses the "key:value" lines of INFO or CLUSTER INFO.
func fields(info string) map[string]string {
	f := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			f[k] = v
		}
	}
	return f
}
