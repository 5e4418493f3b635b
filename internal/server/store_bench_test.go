package server_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"custody/internal/server"
	"custody/internal/store"
	"custody/internal/store/pgtest"
)

// BenchmarkStoreRewrapVsStream compares the in-place rewrap of N rows in
// PostgreSQL (custodyctl rewrap --postgres, 500 rows per call and SQL
// transaction) with the streaming JSON-lines rewrap of the same envelopes
// (custodyctl rewrap --in/--out, 500 lines per request), in the same run,
// with the durable access log. Then, after another rotation makes every
// row due again, it rewraps them in place once more while a live client
// decrypts: one request every livePace (an application's steady traffic),
// and its p50/p99 are compared with the same client on the idle daemon
// just before (after a CHECKPOINT and a sync: what the full-speed runs
// left to write back is on disk by then; first-idle-p99-ms is the idle
// figure taken before them).
// N is CUSTODY_BENCH_STORE_ROWS (default 5,000; make bench-store-100k:
// 100,000); CUSTODY_BENCH_STORE_LIVE_ARGS adds custodyctl flags to the run
// under the live client (for example "--batch 32 --rate 300");
// CUSTODY_BENCH_STORE_PROGRESS=1 logs every 10th progress line of each run. Reported: rows/s of each run, in-place / stream (goal ≥ 0.8),
// the in-place run under the live client, the latencies (goal: p99
// during ≤ 2 × idle), and the p99.9 of the runtime's scheduling wait in the
// idle period and during the run (sched-*-p99.9-ms).
func BenchmarkStoreRewrapVsStream(b *testing.B) {
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("CUSTODY_BENCH_STORE_ROWS")); err == nil && v > 0 {
		n = v
	}
	pg := pgtest.Shared(b)
	h := newHarnessWith(b, func(d *server.Deps) {
		d.Recorder = durableLog(b, d)
		d.Limits.MaxBatchItems = 1000
	})
	h.register("miner-1", "miner-2")
	dir := b.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	h.sealMany(b, n, in)
	dsn := pg.NewDatabase(b)
	ctx := context.Background()
	db, err := store.Open(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if err := db.Init(ctx); err != nil {
		b.Fatal(err)
	}
	fillStore(b, db, in)
	probe := h.seal("tx-probe", "miner-2")
	rotate := func() {
		if _, err := h.keys.Rotate(ctx, "miner-1", h.now); err != nil {
			b.Fatal(err)
		}
	}
	ctl := func(args ...string) time.Duration {
		start := time.Now()
		cmd := exec.Command(filepath.Join(binDir, "custodyctl"), append([]string{"--socket", h.socket}, args...)...)
		outb, err := cmd.CombinedOutput()
		took := time.Since(start)
		if err != nil {
			b.Fatalf("custodyctl %v: %v\n%s", args, err, outb)
		}
		if os.Getenv("CUSTODY_BENCH_STORE_PROGRESS") != "" {
			// Every 10th progress line: the limit the run held.
			for i, l := range strings.Split(strings.TrimSpace(string(outb)), "\n") {
				if i%10 == 0 {
					b.Logf("custodyctl %s: %s", args[0], l)
				}
			}
		}
		return took
	}
	never := func() bool { return false }
	for b.Loop() {
		rotate()
		idle := decryptLatencies(b, h, probe, never, 10*time.Second)
		stream := ctl("rewrap", "--in", in, "--out", out, "--chunk", "500")
		inPlace := ctl("rewrap", "--postgres", dsn, "--batch", "500")
		rotate()
		// What the full-speed runs left to write back (PostgreSQL's dirty
		// pages, the page cache) goes to disk first, and the live client's
		// idle latency is measured again in that state: the paced run is
		// compared with the quiet daemon it starts on.
		checkpoint(b, dsn)
		syscall.Sync()
		sched0 := schedHist()
		idleBefore := decryptLatencies(b, h, probe, never, 10*time.Second)
		sched1 := schedHist()
		done := make(chan time.Duration)
		go func() {
			done <- ctl(append([]string{"rewrap", "--postgres", dsn, "--batch", "500"}, strings.Fields(os.Getenv("CUSTODY_BENCH_STORE_LIVE_ARGS"))...)...)
		}()
		var loaded time.Duration
		during := decryptLatencies(b, h, probe, func() bool {
			select {
			case loaded = <-done:
				return true
			default:
				return false
			}
		}, time.Hour)
		sched2 := schedHist()
		b.ReportMetric(float64(n)/stream.Seconds(), "stream-rows/s")
		b.ReportMetric(float64(n)/inPlace.Seconds(), "inplace-rows/s")
		b.ReportMetric(stream.Seconds()/inPlace.Seconds(), "inplace/stream")
		b.ReportMetric(float64(n)/loaded.Seconds(), "inplace-live-rows/s")
		b.ReportMetric(ms(pct(idle, 99)), "first-idle-p99-ms")
		b.ReportMetric(ms(pct(idleBefore, 50)), "idle-p50-ms")
		b.ReportMetric(ms(pct(idleBefore, 99)), "idle-p99-ms")
		b.ReportMetric(ms(pct(during, 50)), "during-p50-ms")
		b.ReportMetric(ms(pct(during, 99)), "during-p99-ms")
		b.ReportMetric(ms(pct(during, 90)), "during-p90-ms")
		b.ReportMetric(ms(pct(during, 100)), "during-max-ms")
		b.ReportMetric(ms(pct(during, 99))/ms(pct(idleBefore, 99)), "p99-during/idle")
		// How long goroutines of the daemon (this process) waited runnable
		// for a P: hsm.Procs is about this figure (docs/store.md, "Go's
		// scheduler").
		b.ReportMetric(ms(schedPct(sched0, sched1, 99.9)), "sched-idle-p99.9-ms")
		b.ReportMetric(ms(schedPct(sched1, sched2, 99.9)), "sched-during-p99.9-ms")
	}
}

// checkpoint runs CHECKPOINT on the database at dsn.
func checkpoint(b *testing.B, dsn string) {
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "CHECKPOINT"); err != nil {
		b.Fatal(err)
	}
}

// fillStore puts every envelope of a JSON-lines file into the store.
func fillStore(b *testing.B, db *store.Store, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for i := 0; sc.Scan(); i++ {
		var l struct{ Envelope string }
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			b.Fatal(err)
		}
		env, err := base64.RawURLEncoding.DecodeString(l.Envelope)
		if err != nil {
			b.Fatal(err)
		}
		if err := db.Put(context.Background(), store.Row{TransactionID: "tx-" + strconv.Itoa(i), JobID: "job-1", Envelope: env}); err != nil {
			b.Fatal(err)
		}
	}
}

// livePace is the live client's steady traffic in the store benchmark:
// one decrypt every livePace.
const livePace = 10 * time.Millisecond

// decryptLatencies decrypts env, one request every livePace (or at once
// when the last one took longer), until stop says so or d passed, and
// returns each call's latency.
func decryptLatencies(b *testing.B, h *harness, env string, stop func() bool, d time.Duration) []time.Duration {
	var lat []time.Duration
	tick := time.NewTicker(livePace)
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end) && !stop(); <-tick.C {
		t0 := time.Now()
		if st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "miner-2", "purpose": "settlement"}); st != 200 {
			b.Fatalf("decrypt: %d %v", st, body)
		}
		lat = append(lat, time.Since(t0))
	}
	return lat
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// schedHist reads the Go runtime's histogram of how long goroutines of this
// process waited runnable before they ran.
func schedHist() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	return s[0].Value.Float64Histogram()
}

// schedPct is the p-th percentile of the waits recorded between readings a
// and b of schedHist: the upper bound of its bucket (the lower bound for the
// last, open one); 0 if nothing waited.
func schedPct(a, b *metrics.Float64Histogram, p float64) time.Duration {
	var total uint64
	for i := range b.Counts {
		total += b.Counts[i] - a.Counts[i]
	}
	if total == 0 {
		return 0
	}
	want := uint64(math.Ceil(float64(total) * p / 100))
	var acc uint64
	for i := range b.Counts {
		acc += b.Counts[i] - a.Counts[i]
		if acc >= want {
			bound := b.Buckets[i+1]
			if math.IsInf(bound, 1) {
				bound = b.Buckets[i]
			}
			return time.Duration(bound * float64(time.Second))
		}
	}
	return 0
}
