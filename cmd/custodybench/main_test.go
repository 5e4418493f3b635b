package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseFloors(t *testing.T) {
	f, err := parseFloors("decrypt-cold=1538.5, decrypt-warm=259,encrypt=1445")
	if err != nil {
		t.Fatal(err)
	}
	if f["decrypt-cold"] != 1538.5 || f["decrypt-warm"] != 259 || f["encrypt"] != 1445 || len(f) != 3 {
		t.Fatalf("parsed %v", f)
	}
	for _, bad := range []string{"decrypt-cold", "decrypt-cold=", "decrypt-cold=-1", "decrypt-cold=0", "rewrap=5", "encrypt=1e", "encrypt=NaN x"} {
		if _, err := parseFloors(bad); err == nil || !strings.Contains(err.Error(), "--floor-cpu") {
			t.Errorf("parseFloors(%q) = %v, want a --floor-cpu error", bad, err)
		}
	}
	if f, err := parseFloors(""); err != nil || len(f) != 0 {
		t.Errorf(`parseFloors("") = %v, %v`, f, err)
	}
}

// TestProcessCPU reads this process's CPU time both ways: /proc/PID/stat
// (ticks) and getrusage must agree to within a few ticks, and both grow
// with work.
func TestProcessCPU(t *testing.T) {
	spin := func() {
		for start := time.Now(); time.Since(start) < 200*time.Millisecond; {
		}
	}
	spin()
	proc, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	self, err := processCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	if proc < 100*time.Millisecond || self < 100*time.Millisecond {
		t.Fatalf("after 200 ms of spinning: /proc %v, getrusage %v", proc, self)
	}
	if d := self - proc; d < -50*time.Millisecond || d > 50*time.Millisecond {
		t.Errorf("/proc says %v, getrusage %v", proc, self)
	}
	if _, err := processCPU(1 << 30); err == nil {
		t.Error("no error for a pid that does not exist")
	}
}
