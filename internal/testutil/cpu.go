package testutil

import (
	"syscall"
	"testing"
	"time"
)

// ReportCPU starts measuring this process's CPU time (user + system, every
// thread: Go's and, for the hsm benchmarks, SoftHSM's) and returns the
// function that reports it as "cpu-µs/op" over b.N. Call it after the
// benchmark's setup and defer the result: a benchmark's ns/op is wall time
// and, run from several goroutines, says nothing of the cores it used.
func ReportCPU(b *testing.B) (stop func()) {
	start, ok := processCPU()
	return func() {
		end, ok2 := processCPU()
		if ok && ok2 && b.N > 0 {
			b.ReportMetric(float64(end-start)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
		}
	}
}

func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
