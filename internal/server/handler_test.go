package server_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/server"
)

// The tests of this file serve the handler with httptest and an injected
// caller (server.WithPeer): no socket, no Unix users.

func TestHandlerHealth(t *testing.T) {
	h := newHandlerHarness(t)
	st, body := h.call("GET", "/v1/health", nil)
	if st != 200 || body["status"] != "ok" || body["you"] != "operator" {
		t.Fatalf("health as root: %d %v", st, body)
	}
	// Without an injected peer there is no caller at all.
	rr := httptest.NewRecorder()
	h.srv.Handler().ServeHTTP(rr, httptest.NewRequest("GET", "/v1/health", nil))
	if rr.Code != http.StatusForbidden || !strings.Contains(rr.Body.String(), `"code":"unknown_caller"`) {
		t.Errorf("health without a peer: %d %s", rr.Code, rr.Body)
	}
}

func TestHandlerPermissionDenied(t *testing.T) {
	h := newHandlerHarness(t)
	h.peer = server.Peer{UID: uid(appUser), GID: uid(appUser), PID: 4242}
	st, body := h.call("POST", "/v1/participants", map[string]string{"id": "miner-x"})
	if st != http.StatusForbidden || errCode(body) != api.CodePermissionDenied {
		t.Fatalf("register as the app: %d %v, want 403 permission_denied", st, body)
	}
	if e := h.rec.last(); e.Operation != "register" || e.Outcome != auditlog.Denied || e.Code != api.CodePermissionDenied ||
		e.Principal != "settlement-app" || e.Caller.UID != uid(appUser) || e.Caller.PID != 4242 {
		t.Errorf("refusal entry: %+v", e)
	}
}

func TestHandlerRoundTrip(t *testing.T) {
	h := newHandlerHarness(t)
	h.register("client-456", "miner-789")
	env := h.seal("tx-h", "client-456", "miner-789")
	st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "miner-789", "purpose": "settlement"})
	if st != 200 {
		t.Fatalf("decrypt: %d %v", st, body)
	}
	if conf := body["confidential"].(map[string]any); len(conf) != 2 || conf["amount"] != "1000" {
		t.Errorf("settlement disclosure: %v", conf)
	}
	if e := h.rec.last(); e.Operation != "decrypt" || e.Outcome != auditlog.Allowed || e.Principal != "operator" || e.Caller.UID != 0 {
		t.Errorf("decrypt entry: %+v", e)
	}
}

// TestSocketPeerCannotBeInjected: the attack is a caller on the real socket
// (the app's Unix user) whose requests are served in a context that claims
// root (operator, admin) through server.WithPeer. SO_PEERCRED must win: the
// app user's register is refused with permission_denied and recorded under
// its own uid, and health names it settlement-app.
func TestSocketPeerCannotBeInjected(t *testing.T) {
	h, deps := newHarnessDeps(t, nil)
	h.fillDeps(&deps)
	srv, err := server.New(deps)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	ln, err := server.Listen(h.socket, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	claim := server.WithPeer(context.Background(), server.Peer{UID: 0, GID: 0, PID: int32(os.Getpid())})
	go server.ServeWithContext(srv, ln, claim)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	if _, err := os.Stat(filepath.Join(binDir, "custodyctl")); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := h.ctlAs(appUser, "", "participants", "register", "miner-x")
	if code != 1 || !strings.Contains(errOut, api.CodePermissionDenied+":") {
		t.Errorf("app user register with root claimed: exit %d %s; want permission_denied", code, errOut)
	}
	if e := h.rec.last(); e.Operation != "register" || e.Outcome != auditlog.Denied || e.Code != api.CodePermissionDenied ||
		e.Caller.UID != uid(appUser) || e.Principal != "settlement-app" {
		t.Errorf("refusal entry: %+v", e)
	}
	if code, out, errOut := h.ctlAs(appUser, "", "health"); code != 0 || !strings.Contains(out, "you are:      settlement-app") {
		t.Errorf("app user health with root claimed: exit %d %s %s", code, out, errOut)
	}
	// The nobody user stays nobody.
	if code, _, errOut := h.ctlAs(otherUser, "", "health"); code != 1 || !strings.Contains(errOut, "unknown_caller") {
		t.Errorf("other user health with root claimed: exit %d %s", code, errOut)
	}
}

// TestRecordDaemonEvent: cmd/custodyd's daemon events go through
// RecordDaemon: a failure keeps the event's own code (DaemonFailure), the
// caller is the daemon, and a log that refuses the entry is log_unavailable.
func TestRecordDaemonEvent(t *testing.T) {
	h := newHandlerHarness(t)
	ctx := context.Background()
	if err := h.srv.RecordDaemon(ctx, auditlog.Entry{Operation: "daemon.start"}, nil); err != nil {
		t.Fatal(err)
	}
	if e := h.rec.last(); e.Operation != "daemon.start" || e.Outcome != auditlog.Allowed || e.Code != "" ||
		e.Principal != "custodyd" || e.Caller.UID != uint32(os.Getuid()) || e.Caller.Executable == "" || e.Time.IsZero() {
		t.Errorf("daemon.start entry: %+v", e)
	}
	cause := os.ErrNotExist
	if err := h.srv.RecordDaemon(ctx, auditlog.Entry{Operation: "policy.reload", Detail: cause.Error()}, server.DaemonFailure("invalid_policy", cause)); err != nil {
		t.Fatal(err)
	}
	if e := h.rec.last(); e.Operation != "policy.reload" || e.Outcome != auditlog.Failed || e.Code != "invalid_policy" || e.Detail != cause.Error() {
		t.Errorf("policy.reload entry: %+v", e)
	}
	h.rec.setFail(true)
	err := h.srv.RecordDaemon(ctx, auditlog.Entry{Operation: "daemon.stop"}, nil)
	if err == nil || !strings.Contains(err.Error(), api.CodeLogUnavailable) {
		t.Errorf("refused daemon event: %v, want log_unavailable", err)
	}
}
