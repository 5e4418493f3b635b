// Command custodybench drives custodyd (over its Unix socket, with
// internal/client) and Vault's transit engine (over loopback HTTP) with the
// same load and the same confidential object, in alternating rounds, and
// prints each operation's throughput and latency side by side with the
// ratio custody / Vault. `make bench-vs-vault` (scripts/bench-vs-vault.sh)
// starts both on this machine and runs it; README "Performance" explains
// how to read the table.
//
// A round runs C clients, each sending one request after another for
// --duration; ops/s counts items (a batch call of 100 counts 100), p50 and
// p99 are per call. Each row is the median of --rounds rounds, and the
// rounds of custody and Vault alternate, so that both see the same
// machine. Cold decrypts take every envelope (ciphertext) once from a
// pool made before; warm ones cycle through a working set of 100.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "custodybench: error:", err)
		os.Exit(1)
	}
}

// target is one system under test: what each operation does with item i
// of its pool (items are prepared by prepare).
type target interface {
	name() string
	// prepare makes n distinct items for the cold operations and 100 for
	// the warm ones.
	prepare(ctx context.Context, n int, progress io.Writer) error
	// do runs one call of op on item i and returns how many items it
	// handled.
	do(ctx context.Context, op string, i int) (int, error)
}

// ops are the rows, in order; batch ops handle batchSize items per call.
var ops = []string{"decrypt-cold", "decrypt-warm", "encrypt", "batch-decrypt-cold", "batch-decrypt-warm", "batch-encrypt"}

const (
	batchSize = 100
	warmSet   = 100
)

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("custodybench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "run/bench/custodyd.sock", "custodyd's socket")
	vaultAddr := fs.String("vault-addr", "", "Vault's address, http://127.0.0.1:PORT (required)")
	vaultToken := fs.String("vault-token-file", "", "`file` with a Vault token that may mount transit and an audit device (required)")
	auditFile := fs.String("vault-audit-file", "", "enable Vault's file audit device writing to this `path` (same disk as custodyd's access log)")
	duration := fs.Duration("duration", 5*time.Second, "length of one round")
	rounds := fs.Int("rounds", 3, "rounds per row and system (the median is printed)")
	clientList := fs.String("clients", "2,16", "comma-separated client counts")
	opList := fs.String("ops", strings.Join(ops, ","), "comma-separated operations")
	rawNs := fs.Float64("raw-chain-ns", 0, "ns/op of the raw on-device open chain of one envelope v2 with the benchmark's 4 fields, measured in this run (hsm BenchmarkOpenFields4): adds the cold decrypt / raw chain rows")
	rawV1Ns := fs.Float64("raw-v1-chain-ns", 0, "ns/op of the v1 chain (hsm BenchmarkOpenX25519: one payload, no field keys), printed for reference")
	custodyPID := fs.Int("custody-pid", 0, "custodyd's `pid`: adds its CPU time per item (user + system, all threads, from /proc) to each row")
	vaultPID := fs.Int("vault-pid", 0, "Vault's `pid`: the same for Vault")
	floorList := fs.String("floor-cpu", "", "comma-separated `op=µs`: the CPU per item of the cryptography op cannot skip, measured in this run by the raw benchmarks (decrypt-cold, decrypt-warm, encrypt; the batch rows use the same): adds each row's ceiling on this machine")
	pool := fs.Int("cold", 120000, "distinct envelopes made for the cold rows, which share them (a custody round that needs more reopens some, which is then no longer cold, and says so; Vault's reuse changes nothing, its transit decrypt caches nothing per ciphertext)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *vaultAddr == "" || *vaultToken == "" {
		return errors.New("--vault-addr and --vault-token-file are required (scripts/bench-vs-vault.sh sets them)")
	}
	var clients []int
	for _, s := range strings.Split(*clientList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("--clients: %q is not a client count", s)
		}
		clients = append(clients, n)
	}
	selected := strings.Split(*opList, ",")
	for _, op := range selected {
		if !slices.Contains(ops, op) {
			return fmt.Errorf("--ops: unknown operation %q (known: %s)", op, strings.Join(ops, ", "))
		}
	}
	floors, err := parseFloors(*floorList)
	if err != nil {
		return err
	}
	tok, err := os.ReadFile(*vaultToken)
	if err != nil {
		return err
	}
	ctx := context.Background()
	maxClients := slices.Max(clients)
	cu, err := newCustody(*socket)
	if err != nil {
		return err
	}
	va, err := newVault(ctx, *vaultAddr, strings.TrimSpace(string(tok)), *auditFile, maxClients)
	if err != nil {
		return err
	}
	targets := []target{cu, va}
	pids := []int{*custodyPID, *vaultPID}
	for _, t := range targets {
		fmt.Fprintf(stderr, "preparing %s: %d distinct envelopes…\n", t.name(), *pool)
		if err := t.prepare(ctx, *pool, stderr); err != nil {
			return fmt.Errorf("%s: %w", t.name(), err)
		}
	}
	coldRate := map[int]float64{} // clients → custody cold decrypt ops/s
	var ceilings []string         // one line per row with a floor
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "op\tclients\tcustody ops/s\tp50\tp99\tcpu/op\tvault ops/s\tp50\tp99\tcpu/op\tcustody/vault\t\n")
	for _, op := range selected {
		for _, c := range clients {
			var res [2][]result
			fmt.Fprintf(stderr, "measuring %s, %d clients: %d rounds of %s each, alternating\n", op, c, *rounds, *duration)
			for r := 0; r < *rounds; r++ {
				for k, t := range targets {
					x, err := round(ctx, t, op, c, *duration, *pool, pids[k])
					if err != nil {
						return fmt.Errorf("%s %s: %w", t.name(), op, err)
					}
					res[k] = append(res[k], x)
				}
			}
			cm, vm := median(res[0]), median(res[1])
			if op == "decrypt-cold" {
				coldRate[c] = cm.rate
			}
			note := ""
			if cm.reused {
				note = " (cold pool reused: raise --cold)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%.2f\t%s\n", op, c, cm.rate, ms(cm.p50), ms(cm.p99), cm.cpu(), vm.rate, ms(vm.p50), ms(vm.p99), vm.cpu(), cm.rate/vm.rate, note)
			if f, ok := floors[strings.TrimPrefix(op, "batch-")]; ok && cm.benchCPU >= 0 {
				ceil := ceiling(f, cm.benchCPU)
				ceilings = append(ceilings, fmt.Sprintf("  %-20s %2d clients: %5.0f µs + %4d µs  →  at most %6.0f/s = %5.2f × Vault (measured %.0f/s = %.2f of the ceiling)",
					op, c, f, cm.benchCPU.Microseconds(), ceil, ceil/vm.rate, cm.rate, cm.rate/ceil))
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\ncpu/op: the server's CPU time (user + system, all its threads) per item, and in parentheses this load generator's; \"-\" without --custody-pid / --vault-pid")
	if len(ceilings) > 0 {
		fmt.Fprintf(stdout, "\nceilings on this machine (%d cores): the device and software crypto an item cannot skip (--floor-cpu) + the load generator's CPU per item, if the request around them cost nothing:\n", runtime.NumCPU())
		for _, l := range ceilings {
			fmt.Fprintln(stdout, l)
		}
	}
	if *rawNs > 0 && len(coldRate) > 0 {
		raw := 1e9 / *rawNs
		fmt.Fprintf(stdout, "\nraw on-device open chain, envelope v2 with 4 fields: %.0f/s (hsm BenchmarkOpenFields4, this run)\n", raw)
		if *rawV1Ns > 0 {
			fmt.Fprintf(stdout, "raw on-device open chain, envelope v1: %.0f/s (hsm BenchmarkOpenX25519, this run)\n", 1e9 / *rawV1Ns)
		}
		for _, c := range clients {
			if r, ok := coldRate[c]; ok {
				fmt.Fprintf(stdout, "cold decrypt through the socket with the durable log, %d clients: %.0f/s = %.2f × the raw chain\n", c, r, r/raw)
			}
		}
	}
	return nil
}

// result is one round's figures.
type result struct {
	rate      float64 // items per second
	p50, p99  time.Duration
	reused    bool          // a cold round went past the pool
	serverCPU time.Duration // per item; < 0 when not measured
	benchCPU  time.Duration // per item, this load generator's; < 0 when not measured
}

// cpu formats the CPU per item as "412µs (38)": the server's, then the
// load generator's.
func (r result) cpu() string {
	us := func(d time.Duration) string {
		if d < 0 {
			return "-"
		}
		return strconv.FormatInt(d.Microseconds(), 10)
	}
	return us(r.serverCPU) + "µs (" + us(r.benchCPU) + ")"
}

// cursor hands out pool positions to a round's clients; cold operations
// continue where the previous round stopped, and the cold rows (single and
// batch) share one cursor per target: a second open of an envelope is not
// cold (the DEK cache admits it), so no cold row may reopen another's.
var cursors sync.Map // target name + op ("cold" for the cold rows) → *atomic.Int64

// round runs one round of op on t; pid, when not 0, is t's process, whose
// CPU time it measures.
func round(ctx context.Context, t target, op string, clients int, d time.Duration, pool, pid int) (result, error) {
	key := op
	if strings.HasSuffix(op, "-cold") {
		key = "cold"
	}
	cur, _ := cursors.LoadOrStore(t.name()+"/"+key, new(atomic.Int64))
	next := cur.(*atomic.Int64)
	step := int64(1)
	if strings.HasPrefix(op, "batch-") {
		step = batchSize
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		lat   []time.Duration
		items atomic.Int64
		first error
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	cpu := startCPU(pid)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(deadline) {
				i := int(next.Add(step) - step)
				t0 := time.Now()
				n, err := t.do(ctx, op, i)
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
				items.Add(int64(n))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	serverCPU, benchCPU := cpu.stop()
	if first != nil {
		return result{}, first
	}
	el := time.Since(start)
	slices.Sort(lat)
	r := result{rate: float64(items.Load()) / el.Seconds(), reused: strings.HasSuffix(op, "-cold") && next.Load() > int64(pool),
		serverCPU: perItem(serverCPU, items.Load()), benchCPU: perItem(benchCPU, items.Load())}
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r, nil
}

// parseFloors parses --floor-cpu: "op=µs,…" with op one of decrypt-cold,
// decrypt-warm, encrypt.
func parseFloors(list string) (map[string]float64, error) {
	floors := map[string]float64{}
	if list == "" {
		return floors, nil
	}
	for _, kv := range strings.Split(list, ",") {
		op, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		us, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil || us <= 0 || !slices.Contains([]string{"decrypt-cold", "decrypt-warm", "encrypt"}, op) {
			return nil, fmt.Errorf("--floor-cpu: %q is not op=µs with op decrypt-cold, decrypt-warm or encrypt", kv)
		}
		floors[op] = us
	}
	return floors, nil
}

// ceiling is the most items per second this machine's cores could give if
// each item cost floorUS µs of CPU in the server and bench in the load
// generator, and nothing else.
func ceiling(floorUS float64, bench time.Duration) float64 {
	return float64(runtime.NumCPU()) * 1e6 / (floorUS + float64(bench)/float64(time.Microsecond))
}

// perItem divides a CPU time over n items; -1 stays -1 (not measured).
func perItem(d time.Duration, n int64) time.Duration {
	if d < 0 || n == 0 {
		return -1
	}
	return d / time.Duration(n)
}

// median is the round with the median rate (its latencies with it).
func median(rs []result) result {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b result) int {
		switch {
		case a.rate < b.rate:
			return -1
		case a.rate > b.rate:
			return 1
		}
		return 0
	})
	m := s[len(s)/2]
	for _, r := range rs {
		m.reused = m.reused || r.reused
	}
	return m
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }
