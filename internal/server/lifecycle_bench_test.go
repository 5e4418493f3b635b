package server_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"custody/internal/server"
)

// readEnvelopes reads the envelope texts of a JSON-lines file.
func readEnvelopes(t testing.TB, path string) []string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l struct{ Envelope string }
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l.Envelope)
	}
	return out
}

// BenchmarkRewrapVsDecrypt measures rewrap throughput through the socket
// against participant decrypts (2 clients) of the same envelopes in the same
// run. Each envelope's participant stanza moves to the rotated key on the
// device and the header is signed again; rewrap runs twice: in batches of
// 50 from 2 clients (POST /v1/envelopes/rewrap) and streamed in requests of
// 500 lines from one client, as custodyctl rewrap does. The three take turns
// over rounds of 1,000 envelopes, so that the machine's drift hits them
// alike. Reported: decrypts/s, rewraps/s of the batches, and each rewrap
// rate over the decrypt rate (the goal is ≥ 0.7).
func BenchmarkRewrapVsDecrypt(b *testing.B) {
	h := newHarness(b)
	h.register("miner-1")
	n := max(b.N, 1000)
	in := filepath.Join(b.TempDir(), "in.jsonl")
	h.sealMany(b, n, in)
	envs := readEnvelopes(b, in)
	if _, err := h.keys.Rotate(b.Context(), "miner-1", h.now); err != nil {
		b.Fatal(err)
	}
	// chunks feeds envs[lo:hi] in pieces of size.
	chunks := func(lo, hi, size int) <-chan []string {
		c := make(chan []string, (hi-lo)/size+1)
		for i := lo; i < hi; i += size {
			c <- envs[i:min(hi, i+size)]
		}
		close(c)
		return c
	}
	decrypt := func(next <-chan []string) func() error {
		return func() error {
			e, ok := <-next
			if !ok {
				return nil
			}
			st, out := h.callRaw("POST", "/v1/transactions/decrypt", fmt.Sprintf(`{"envelope":%q,"as":"miner-1","purpose":"settlement"}`, e[0]))
			if st != 200 {
				return fmt.Errorf("decrypt: %d %s", st, out)
			}
			return nil
		}
	}
	rewrap := func(next <-chan []string) func() error {
		return func() error {
			batch, ok := <-next
			if !ok {
				return nil
			}
			var items []map[string]string
			for _, e := range batch {
				items = append(items, map[string]string{"envelope": e})
			}
			st, out := h.call("POST", "/v1/envelopes/rewrap", map[string]any{"items": items})
			if st != 200 {
				return fmt.Errorf("rewrap: %d %v", st, out)
			}
			for _, r := range out["results"].([]any) {
				if res, _ := r.(map[string]any)["result"].(map[string]any); res == nil || res["changed"] != true {
					return fmt.Errorf("rewrap item: %v", r)
				}
			}
			return nil
		}
	}
	stream := func(next <-chan []string) func() error {
		return func() error {
			chunk, ok := <-next
			if !ok {
				return nil
			}
			var body strings.Builder
			for _, e := range chunk {
				fmt.Fprintf(&body, "{\"envelope\":%q}\n", e)
			}
			st, out := h.callRaw("POST", "/v1/envelopes/rewrap/stream", body.String())
			if st != 200 {
				return fmt.Errorf("stream: %d %s", st, out)
			}
			if c := strings.Count(string(out), `"changed":true`); c != len(chunk) {
				return fmt.Errorf("stream: %d of %d lines changed: %.300s", c, len(chunk), out)
			}
			return nil
		}
	}
	var decT, rwT, stT time.Duration
	const round = 1000
	for lo := 0; lo < n; lo += round {
		hi := min(n, lo+round)
		decT += runConcurrently(b, hi-lo, 2, decrypt(chunks(lo, hi, 1)))
		rwT += runConcurrently(b, (hi-lo+49)/50, 2, rewrap(chunks(lo, hi, 50)))
		stT += runConcurrently(b, (hi-lo+499)/500, 1, stream(chunks(lo, hi, 500)))
	}
	dec, rw, str := float64(n)/decT.Seconds(), float64(n)/rwT.Seconds(), float64(n)/stT.Seconds()
	b.ReportMetric(dec, "decrypts/s")
	b.ReportMetric(rw, "rewraps/s")
	b.ReportMetric(rw/dec, "ratio-rewrap/decrypt")
	b.ReportMetric(str/dec, "ratio-stream/decrypt")
}

// BenchmarkRewrap100kStreaming runs custodyctl rewrap over 100,000
// envelopes (JSON lines, streamed in chunks of 500) and reports its peak
// RSS, the daemon's (this process's) RSS before and its peak in each
// quarter of the run, and the rate. It takes
// many minutes on a small machine: it runs only with CUSTODY_BENCH_100K=1
// (make bench-rewrap-100k).
func BenchmarkRewrap100kStreaming(b *testing.B) {
	if os.Getenv("CUSTODY_BENCH_100K") != "1" {
		b.Skip("set CUSTODY_BENCH_100K=1 (make bench-rewrap-100k): it takes many minutes")
	}
	const n = 100000
	// The durable access log, as in custodyd (the harness's recorder keeps
	// every entry in memory).
	h := newHarnessWith(b, func(d *server.Deps) { d.Recorder = durableLog(b, d) })
	h.register("miner-1")
	dir := b.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	h.sealMany(b, n, in)
	if _, err := h.keys.Rotate(b.Context(), "miner-1", h.now); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		before := rssKiB(b)
		start := time.Now()
		cmd := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", h.socket, "rewrap", "--in", in, "--out", out)
		var stdout strings.Builder
		cmd.Stdout = &stdout
		// The daemon's resident set, sampled every 250 ms while the run lasts.
		var samples []int
		stop, sampled := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(sampled)
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					samples = append(samples, vmRSSKiB(b))
				}
			}
		}()
		err := cmd.Run()
		close(stop)
		<-sampled
		if err != nil {
			b.Fatalf("rewrap: %v\n%s", err, stdout.String())
		}
		d := time.Since(start)
		peak := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // KiB on Linux
		b.ReportMetric(float64(peak)/1024, "cli-peak-rss-MiB")
		b.ReportMetric(float64(before)/1024, "daemon-rss-before-MiB")
		// Peak of each quarter of the run: flat from the second quarter on
		// means the daemon's memory does not grow with the number of envelopes.
		for q := range 4 {
			lo, hi := q*len(samples)/4, (q+1)*len(samples)/4
			m := 0
			for _, v := range samples[lo:hi] {
				m = max(m, v)
			}
			b.ReportMetric(float64(m)/1024, fmt.Sprintf("daemon-rss-q%d-MiB", q+1))
		}
		b.ReportMetric(n/d.Seconds(), "rewraps/s")
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "daemon-go-heap-MiB")
		b.ReportMetric(float64(ms.Sys)/(1<<20), "daemon-go-sys-MiB")
		b.ReportMetric(float64(ms.HeapIdle-ms.HeapReleased)/(1<<20), "daemon-go-idle-MiB")
		b.ReportMetric(float64(h.token.Info().Recycles), "module-recycles")
		b.Logf("%s", strings.TrimSpace(stdout.String()))
	}
}

// BenchmarkDecryptLatencyDuringRewrap measures what a bulk rewrap costs the
// applications: one client decrypts one request at a time, first on an
// idle daemon, then while a streamed rewrap of 3,000 envelopes (requests of
// 500 lines, as custodyctl sends them) runs. Reported: p50 and p99 decrypt
// latency of each phase (ms) and the rewrap's rate.
func BenchmarkDecryptLatencyDuringRewrap(b *testing.B) {
	h := newHarness(b)
	h.register("miner-1", "client-1")
	in := filepath.Join(b.TempDir(), "in.jsonl")
	const n = 3000
	h.sealMany(b, n, in)
	if _, err := h.keys.Rotate(b.Context(), "miner-1", h.now); err != nil {
		b.Fatal(err)
	}
	envs := readEnvelopes(b, in)
	body := fmt.Sprintf(`{"envelope":%q,"as":"client-1","purpose":"dispute"}`, h.seal("tx-live", "client-1"))
	decrypt := func() time.Duration {
		start := time.Now()
		if st, out := h.callRaw("POST", "/v1/transactions/decrypt", body); st != 200 {
			b.Fatalf("decrypt: %d %s", st, out)
		}
		return time.Since(start)
	}
	pct := func(l []time.Duration, p float64) float64 {
		slices.Sort(l)
		return float64(l[int(p*float64(len(l)-1))]) / 1e6
	}
	for b.Loop() {
		var idle []time.Duration
		for range 300 {
			idle = append(idle, decrypt())
		}
		done := make(chan time.Duration)
		go func() {
			start := time.Now()
			for i := 0; i < n; i += 500 {
				var sb strings.Builder
				for _, e := range envs[i:min(n, i+500)] {
					fmt.Fprintf(&sb, "{\"envelope\":%q}\n", e)
				}
				if st, out := h.callRaw("POST", "/v1/envelopes/rewrap/stream", sb.String()); st != 200 {
					b.Errorf("stream: %d %.200s", st, out)
				}
			}
			done <- time.Since(start)
		}()
		var busy []time.Duration
		var took time.Duration
	loop:
		for {
			select {
			case took = <-done:
				break loop
			default:
				busy = append(busy, decrypt())
			}
		}
		b.ReportMetric(pct(idle, 0.5), "idle-p50-ms")
		b.ReportMetric(pct(idle, 0.99), "idle-p99-ms")
		b.ReportMetric(pct(busy, 0.5), "rewrap-p50-ms")
		b.ReportMetric(pct(busy, 0.99), "rewrap-p99-ms")
		b.ReportMetric(n/took.Seconds(), "rewraps/s")
	}
}
