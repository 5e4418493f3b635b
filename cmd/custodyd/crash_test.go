package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"custody/internal/testutil"
)

// TestKill9DuringDecrypts kills custodyd with SIGKILL while eight clients
// decrypt distinct envelopes v2, whose entries are written while the device
// opens (startDecrypt). Every plaintext a client received must have its
// allowed decrypt entry in the log the dead daemon left: a crash between
// the entry and the release can leave an entry without a release, never a
// release without an entry.
func TestKill9DuringDecrypts(t *testing.T) {
	d := setup(t)
	d.start()
	if out, err := d.ctl("participants", "register", "p-1"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.socket)
	}}}
	post := func(path, body string) (int, []byte, error) {
		resp, err := c.Post("http://custody"+path, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	const n = 400
	envs := make([]string, n)
	for i := range envs {
		st, b, err := post("/v1/transactions/encrypt", fmt.Sprintf(`{"transaction_id":"tx-%d","job_id":"j","confidential":{"amount":%d},"participants":["p-1"]}`, i, i))
		var e struct{ Envelope string }
		if err != nil || st != 200 || json.Unmarshal(b, &e) != nil {
			t.Fatalf("encrypt %d: %d %s %v", i, st, b, err)
		}
		envs[i] = e.Envelope
	}
	var mu sync.Mutex
	released := map[string]bool{}
	var wg sync.WaitGroup
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				body, _ := json.Marshal(map[string]string{"envelope": envs[i], "as": "p-1", "purpose": "settlement"})
				st, b, err := post("/v1/transactions/decrypt", string(body))
				if err != nil {
					return // the daemon is gone
				}
				if st == 200 && strings.Contains(string(b), fmt.Sprintf(`"amount":%d`, i)) {
					mu.Lock()
					released[fmt.Sprintf("tx-%d", i)] = true
					mu.Unlock()
				}
			}
		}()
	}
	testutil.Poll(30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(released) >= 40
	})
	d.cmd.Process.Kill()
	<-d.done
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(released) < 40 || len(released) == n {
		t.Fatalf("%d of %d decrypts released before the kill: the kill did not land mid-run", len(released), n)
	}

	logged := allowedTransactions(t, filepath.Join(d.dir, "log"), "decrypt")
	for tx := range released {
		if !logged[tx] {
			t.Errorf("released %s has no allowed decrypt entry", tx)
		}
	}
	t.Logf("%d released, %d allowed decrypt entries in the log of the killed daemon", len(released), len(logged))
	// The daemon starts again on that log and it verifies.
	d.start()
	d.signal(syscall.SIGTERM)
	<-d.done
	verifyLog(t, filepath.Join(d.dir, "log"))
}
