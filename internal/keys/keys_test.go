package keys

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"custody/hsm"
	"custody/hsm/hsmtest"
)

func TestMain(m *testing.M) { hsmtest.Main(m) }

func TestParseLabel(t *testing.T) {
	for _, tc := range []struct {
		label, kind, id string
		n               uint32
		ok              bool
	}{
		{"custody/participant/miner-1/v1", "participant", "miner-1", 1, true},
		{"custody/participant/a.b:c_d/v12", "participant", "a.b:c_d", 12, true},
		{"custody/escrow/v3", "escrow", "", 3, true},
		{"custody/signing/v1", "signing", "", 1, true},
		{"custody/participant/miner-1/v0", "", "", 0, false},
		{"custody/participant/miner-1/v01", "", "", 0, false},
		{"custody/participant/miner-1/1", "", "", 0, false},
		{"custody/participant/-bad/v1", "", "", 0, false},
		{"custody/participant/v1", "", "", 0, false},
		{"custody/log/v1", "", "", 0, false},
		{"other/escrow/v1", "", "", 0, false},
	} {
		kind, id, n, err := parseLabel(tc.label)
		if (err == nil) != tc.ok || kind != tc.kind || id != tc.id || n != tc.n {
			t.Errorf("%s: got %q %q %d %v", tc.label, kind, id, n, err)
		}
	}
	if got := ParticipantLabel("miner-1", 7); got != "custody/participant/miner-1/v7" {
		t.Errorf("ParticipantLabel: %s", got)
	}
}

// TestRegistryRebuildsFromToken: the token is the only store; a second
// registry over the same token (a restarted daemon) sees the same keys,
// and registration never overwrites, whichever registry asks.
func TestRegistryRebuildsFromToken(t *testing.T) {
	ctx := context.Background()
	tok, r := openRegistry(t, hsmtest.NewToken(t))
	if _, err := r.Escrow(); !errors.Is(err, ErrNoDaemonKeys) {
		t.Errorf("escrow before EnsureDaemonKeys: %v", err)
	}
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	created, err := r.EnsureDaemonKeys(ctx, now)
	if err != nil || len(created) != 2 {
		t.Fatalf("EnsureDaemonKeys: %v %v", created, err)
	}
	v, err := r.Register(ctx, "miner-1", now)
	if err != nil || v.Number != 1 || v.Alg != hsm.X25519 || len(v.Public) != 32 {
		t.Fatalf("register: %+v %v", v, err)
	}
	if _, err := r.Register(ctx, "miner-1", now); !errors.Is(err, ErrExists) {
		t.Errorf("second register: %v", err)
	}
	if _, err := r.Register(ctx, "bad/id", now); err == nil {
		t.Error("registered an invalid id")
	}

	r2, err := Load(ctx, tok, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if again, err := r2.EnsureDaemonKeys(ctx, now); err != nil || len(again) != 0 {
		t.Errorf("EnsureDaemonKeys after restart created %v, %v", again, err)
	}
	v2, err := r2.Active("miner-1")
	if err != nil || string(v2.Public) != string(v.Public) || !v2.Created.Equal(now.Truncate(24*time.Hour)) {
		t.Errorf("after restart: %+v %v (want public key and creation day kept)", v2, err)
	}
	// The second registry did not see the first's registration in memory,
	// but the token refuses the duplicate.
	r3, _ := Load(ctx, tok, slog.New(slog.DiscardHandler))
	r.Register(ctx, "miner-2", now)
	if _, err := r3.Register(ctx, "miner-2", now); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate through another registry: %v", err)
	}
	e1, _ := r.Escrow()
	e2, _ := r2.Escrow()
	if e1.Fingerprint() != e2.Fingerprint() {
		t.Error("escrow key differs after restart")
	}
	s, err := r2.Signer()
	if err != nil || s.KeyID() != "signing:v1" || s.Label() != "custody/signing/v1" {
		t.Fatalf("signer: %v %v", s, err)
	}
	if _, err := r2.SigningKey("signing:v1"); err != nil {
		t.Error(err)
	}
	if _, err := r2.SigningKey("signing:v2"); !errors.Is(err, ErrUnknownVersion) {
		t.Errorf("unknown signing key: %v", err)
	}
	if _, err := r2.ParticipantVersion("miner-1", 2); !errors.Is(err, ErrUnknownVersion) {
		t.Errorf("unknown version: %v", err)
	}
	if _, err := r2.Participant("nobody"); !errors.Is(err, ErrUnknownParticipant) {
		t.Errorf("unknown participant: %v", err)
	}
}

func TestAges(t *testing.T) {
	ctx := context.Background()
	_, r := openRegistry(t, hsmtest.NewToken(t))
	old := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	recent := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	r.EnsureDaemonKeys(ctx, old)
	r.Register(ctx, "a", old)
	r.Register(ctx, "b", recent)
	ages := r.Ages(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC), DefaultRotateAfter)
	if p := ages["participant"]; p.Count != 2 || p.Due != 1 || p.Oldest != 329*24*time.Hour {
		t.Errorf("participants: %+v", p)
	}
	if e := ages["escrow"]; e.Count != 1 || e.Due != 1 {
		t.Errorf("escrow: %+v", e)
	}
	if s := ages["signing"]; s.Count != 1 || s.Due != 1 {
		t.Errorf("signing: %+v", s)
	}
}

// openRegistry opens the test token cfg and a registry over it; the token
// is closed with the test.
func openRegistry(t *testing.T, cfg hsm.Config) (*hsm.Token, *Registry) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	tok, err := hsm.Open(t.Context(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	r, err := Load(t.Context(), tok, log)
	if err != nil {
		t.Fatal(err)
	}
	return tok, r
}
