package auditlog_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"custody/internal/auditlog"
)

// rawFsyncRate measures write(512 bytes)+fdatasync per second in dir.
func rawFsyncRate(b *testing.B, dir string) float64 {
	f, err := os.Create(filepath.Join(dir, "raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 512)
	const n = 300
	start := time.Now()
	for range n {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	return n / time.Since(start).Seconds()
}

// BenchmarkAppend: durable appends/s with 1, 16 and 64 concurrent writers,
// and the ratio to raw fsync'd 512-byte writes on the same disk (x_raw).
func BenchmarkAppend(b *testing.B) {
	base, err := os.MkdirTemp(".", ".bench-") // the package's disk, not a tmpfs
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(base)
	raw := rawFsyncRate(b, base)
	b.Logf("raw fsync'd 512-byte writes: %.0f/s", raw)
	for _, w := range []int{1, 16, 64} {
		b.Run("writers="+itoa(w), func(b *testing.B) {
			dir, _ := os.MkdirTemp(base, "log-")
			cfg := testConfig(dir)
			l := openLog(b, cfg)
			e := entry(1)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			per := (b.N + w - 1) / w
			for range w {
				wg.Go(func() {
					for range per {
						if err := l.Record(context.Background(), e); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			rate := float64(per*w) / time.Since(start).Seconds()
			b.StopTimer()
			l.Close()
			b.ReportMetric(rate, "appends/s")
			b.ReportMetric(rate/raw, "x_raw")
		})
	}
}

func itoa(i int) string { return string(rune('0'+i/10%10)) + string(rune('0'+i%10)) }

// BenchmarkVerify1M: offline verify of a log of 1,000,000 entries
// (generated through the log with group commit). -short skips it.
func BenchmarkVerify1M(b *testing.B) {
	if testing.Short() {
		b.Skip("1M entries")
	}
	dir := b.TempDir()
	cfg := testConfig(dir)
	cfg.CheckpointEvery = 10000
	l := openLog(b, cfg)
	const n, w = 1_000_000, 256
	var wg sync.WaitGroup
	for g := range w {
		wg.Go(func() {
			for i := g; i < n; i += w {
				if err := l.Record(context.Background(), entry(i)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	l.Close()
	v := testVerifier(b)
	b.ResetTimer()
	var total time.Duration
	runs := 0
	for b.Loop() {
		start := time.Now()
		res, err := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: v})
		if err != nil || !res.OK || res.Entries != n {
			b.Fatalf("%+v %v", res, err)
		}
		total += time.Since(start)
		runs++
	}
	b.ReportMetric(total.Seconds()/float64(runs), "s/verify") // the mean, not the last run
}
