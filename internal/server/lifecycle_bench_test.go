package server_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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
// (batches of 50, 2 clients; each envelope's participant stanza moves to the
// rotated key on the device and the header is signed again) against
// participant decrypts of the same envelopes in the same run. Reported:
// envelopes/s of each and rewrap/decrypt (the goal is ≥ 0.7).
func BenchmarkRewrapVsDecrypt(b *testing.B) {
	h := newHarness(b)
	h.register("miner-1")
	n := max(b.N, 200)
	in := filepath.Join(b.TempDir(), "in.jsonl")
	h.sealMany(b, n, in)
	envs := readEnvelopes(b, in)
	if _, err := h.keys.Rotate(b.Context(), "miner-1", h.now); err != nil {
		b.Fatal(err)
	}
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	decrypt := func() error {
		i, ok := <-next
		if !ok {
			return nil
		}
		st, out := h.callRaw("POST", "/v1/transactions/decrypt", fmt.Sprintf(`{"envelope":%q,"as":"miner-1","purpose":"settlement"}`, envs[i]))
		if st != 200 {
			return fmt.Errorf("decrypt: %d %s", st, out)
		}
		return nil
	}
	decT := runConcurrently(b, n, 2, decrypt)

	batches := make(chan []string, n/50+1)
	for i := 0; i < n; i += 50 {
		batches <- envs[i:min(n, i+50)]
	}
	close(batches)
	rewrap := func() error {
		batch, ok := <-batches
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
	rwT := runConcurrently(b, (n+49)/50, 2, rewrap)
	dec, rw := float64(n)/decT.Seconds(), float64(n)/rwT.Seconds()
	b.ReportMetric(dec, "decrypts/s")
	b.ReportMetric(rw, "rewraps/s")
	b.ReportMetric(rw/dec, "ratio-rewrap/decrypt")
}

// BenchmarkRewrap100kStreaming runs custodyctl rewrap over 100,000
// envelopes (JSON lines, streamed in chunks of 500) and reports its peak
// RSS, the daemon process's RSS before and after, and the rate. It takes
// many minutes on a small machine: it runs only with CUSTODY_BENCH_100K=1
// (make bench-rewrap-100k).
func BenchmarkRewrap100kStreaming(b *testing.B) {
	if os.Getenv("CUSTODY_BENCH_100K") != "1" {
		b.Skip("set CUSTODY_BENCH_100K=1 (make bench-rewrap-100k): it takes many minutes")
	}
	const n = 100000
	h := newHarness(b)
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
		if err := cmd.Run(); err != nil {
			b.Fatalf("rewrap: %v\n%s", err, stdout.String())
		}
		d := time.Since(start)
		peak := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // KiB on Linux
		b.ReportMetric(float64(peak)/1024, "cli-peak-rss-MiB")
		b.ReportMetric(float64(before)/1024, "daemon-rss-before-MiB")
		b.ReportMetric(float64(rssKiB(b))/1024, "daemon-rss-after-MiB")
		b.ReportMetric(n/d.Seconds(), "rewraps/s")
		b.Logf("%s", strings.TrimSpace(stdout.String()))
	}
}
