package auditlog_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"custody/internal/auditlog"
	"custody/internal/config/duration"
)

// crashChild is the appending process of TestKill9: it appends from 16
// goroutines and prints "ack <index> <transaction id>" once Record returned.
func init() {
	dir := os.Getenv("AUDITLOG_CRASH_CHILD")
	if dir == "" {
		return
	}
	cfg := testConfig(dir)
	cfg.CheckpointEvery = 50
	cfg.CheckpointInterval = duration.Duration(20 * time.Millisecond)
	l, err := auditlog.Open(context.Background(), cfg, testSigner(), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	round := os.Getenv("AUDITLOG_CRASH_ROUND")
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				e := entry(i)
				e.TransactionID = fmt.Sprintf("r%s-g%d-%d", round, g, i)
				idx, err := l.Append(context.Background(), e)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintf(out, "ack %d %s\n", idx, e.TransactionID)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestKill9 kills an appending process with SIGKILL at random moments,
// several rounds on the same log: every acknowledged entry must be there,
// at its index, and the log must open and verify each time.
func TestKill9(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rounds := 6
	if testing.Short() {
		rounds = 2
	}
	for round := range rounds {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "AUDITLOG_CRASH_CHILD="+dir, "AUDITLOG_CRASH_ROUND="+strconv.Itoa(round))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := map[int64]string{}
		var ackMu sync.Mutex
		readDone := make(chan struct{})
		first := make(chan struct{})
		var once sync.Once
		go func() {
			defer close(readDone)
			rd := bufio.NewReader(stdout)
			for {
				line, err := rd.ReadString('\n')
				if err != nil {
					return // EOF; a last line without its newline was cut by the kill
				}
				f := strings.Fields(line)
				if len(f) != 3 || f[0] != "ack" {
					continue
				}
				i, _ := strconv.ParseInt(f[1], 10, 64)
				ackMu.Lock()
				acked[i] = f[2]
				ackMu.Unlock()
				once.Do(func() { close(first) })
			}
		}()
		select {
		case <-first:
		case <-readDone:
		case <-time.After(30 * time.Second):
		}
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond) // let time pass: kill at a random point of the appends
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		<-readDone
		if len(acked) == 0 {
			t.Fatalf("round %d: the child acknowledged nothing", round)
		}
		got := map[int64]string{}
		if err := auditlog.ReadEntries(dir, func(i int64, e auditlog.Entry) error {
			got[i] = e.TransactionID
			return nil
		}); err != nil {
			t.Fatalf("round %d: reading the crashed log: %v", round, err)
		}
		for i, tx := range acked {
			if got[i] != tx {
				t.Fatalf("round %d: acknowledged entry %d (%s) is %q after the crash", round, i, tx, got[i])
			}
		}
		// Restart: the log opens, signs a checkpoint over everything, verifies.
		l := openLog(t, testConfig(dir))
		n := l.Size()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		res, err := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: testVerifier(t)})
		if err != nil || !res.OK || res.Entries != n {
			t.Fatalf("round %d: verify after restart: %+v %v", round, res, err)
		}
		t.Logf("round %d: %d acknowledged, %d entries in the log", round, len(acked), n)
	}
	_ = filepath.Join
}
