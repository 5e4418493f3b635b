package server_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"custody/hsm"
	"custody/internal/auditlog"
	"custody/internal/config/duration"
	"custody/internal/server"
)

func TestLogRoutesWithoutLog(t *testing.T) {
	h := newHarness(t)
	st, body := h.call("GET", "/v1/log/checkpoint", nil)
	if st != 503 || errCode(body) != "log_unavailable" {
		t.Fatalf("no access log: %d %v", st, body)
	}
}

// TestLogRoutesRealDaemon runs the daemon with the real access log (HSM
// Ed25519 checkpoint key), serves the reviewer's routes, then runs the
// offline reviewer commands on a copy of what it wrote.
func TestLogRoutesRealDaemon(t *testing.T) {
	dir := t.TempDir()
	var alog *auditlog.Log
	var vkey string // the reviewer's own copy of the log key
	h := newHarnessWith(t, func(d *server.Deps) {
		ctx := context.Background()
		cfg := auditlog.DefaultConfig()
		cfg.Dir, cfg.CheckpointInterval = dir, duration.Duration(20*time.Millisecond)
		s, _, err := auditlog.EnsureDeviceSigner(ctx, d.Token.(*hsm.Token), cfg.Origin, cfg.SigningKeyLabel, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		vkey = s.VerifierKey()
		alog, err = auditlog.Open(ctx, cfg, s, nil)
		if err != nil {
			t.Fatal(err)
		}
		d.Recorder, d.AccessLog = alog, alog
	})
	h.register("miner-1", "client-1")
	env := h.seal("tx-log-1", "miner-1", "client-1")
	if st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "miner-1", "purpose": "settlement"}); st != 200 {
		t.Fatalf("decrypt: %d %v", st, body)
	}
	if st, _ := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "miner-1", "purpose": "no-such"}); st == 200 {
		t.Fatal("a denied decrypt succeeded")
	}
	n := alog.Size()
	if n < 5 {
		t.Fatalf("%d entries after 5 decisions", n)
	}
	if err := alog.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	st, body := h.call("GET", "/v1/log/checkpoint", nil)
	if st != 200 || int64(body["size"].(float64)) != n || !strings.Contains(body["checkpoint"].(string), "\n— "+auditlog.DefaultOrigin+" ") {
		t.Fatalf("checkpoint: %d %v", st, body)
	}
	root, _ := base64.StdEncoding.DecodeString(body["root"].(string))
	st, body = h.call("GET", fmt.Sprintf("/v1/log/entries?start=0&end=%d", n), nil)
	entries, _ := body["entries"].([]any)
	if st != 200 || int64(len(entries)) != n {
		t.Fatalf("entries: %d %v", st, body)
	}
	last := entries[n-1].(map[string]any)["entry"].(map[string]any)
	if last["op"] != "decrypt" || last["outcome"] != "denied" || last["principal"] != "operator" {
		t.Fatalf("last entry %v", last)
	}
	st, body = h.call("GET", fmt.Sprintf("/v1/log/proof/inclusion?index=2&size=%d", n), nil)
	if st != 200 {
		t.Fatalf("inclusion: %d %v", st, body)
	}
	var proof []tlog.Hash
	for _, p := range body["proof"].([]any) {
		b, _ := base64.StdEncoding.DecodeString(p.(string))
		proof = append(proof, tlog.Hash(b))
	}
	leaf, _ := base64.StdEncoding.DecodeString(body["leaf_hash"].(string))
	if err := tlog.CheckRecord(proof, n, tlog.Hash(root), 2, tlog.Hash(leaf)); err != nil {
		t.Fatalf("inclusion proof from the socket does not check: %v", err)
	}
	if st, body = h.call("GET", fmt.Sprintf("/v1/log/proof/consistency?old=2&new=%d", n), nil); st != 200 {
		t.Fatalf("consistency: %d %v", st, body)
	}
	for _, q := range []string{"/v1/log/entries?start=5&end=2", "/v1/log/entries?start=0&end=99999", "/v1/log/proof/inclusion?index=x&size=1"} {
		if st, body := h.call("GET", q, nil); st != 400 || errCode(body) != "bad_request" {
			t.Errorf("%s: %d %v", q, st, body)
		}
	}
	// Shut down: a final checkpoint, then the reviewer works offline on a copy.
	if err := alog.Close(); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-r", dir, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	ctl := filepath.Join(binDir, "custodyctl")
	key := filepath.Join(t.TempDir(), "log.pub")
	if err := os.WriteFile(key, []byte(vkey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"log", "verify", cp, "--key", key},
		{"log", "prove", cp, "1", "--key", key},
		{"log", "query", cp, "--principal", "operator", "--outcome", "denied", "--format", "jsonl"},
	} {
		out, err := exec.Command(ctl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		if args[1] == "verify" && !strings.Contains(string(out), "OK:") {
			t.Fatalf("verify: %s", out)
		}
		if args[1] == "query" && strings.Count(string(out), "\n") != 1 {
			t.Fatalf("query: want the one denial:\n%s", out)
		}
	}
}

// TestLogRoutesNeedReviewer: without the reviewer role the log routes are
// refused, and the refusal is recorded.
func TestLogRoutesNeedReviewer(t *testing.T) {
	h := newHarness(t)
	noReviewer := strings.Replace(testPolicy, `"roles": ["admin", "application", "reviewer"]`, `"roles": ["admin", "application"]`, 1)
	if noReviewer == testPolicy {
		t.Fatal("test policy changed shape: update this test")
	}
	if err := os.WriteFile(h.store.Path(), []byte(noReviewer), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.store.Reload(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/log/checkpoint", "/v1/log/entries?start=0&end=1", "/v1/log/proof/inclusion?index=0&size=1", "/v1/log/proof/consistency?old=1&new=1"} {
		st, body := h.call("GET", path, nil)
		if st != 403 || errCode(body) != "permission_denied" {
			t.Errorf("%s without the reviewer role: %d %v", path, st, body)
		}
		if e := h.rec.last(); e.Outcome != auditlog.Denied || e.Code != "permission_denied" {
			t.Errorf("%s: refusal not recorded: %+v", path, e)
		}
	}
}
