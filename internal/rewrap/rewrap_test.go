package rewrap_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/auditlog"
	"custody/internal/device"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/rewrap"
)

func TestMain(m *testing.M) { hsmtest.Main(m) }

type fixture struct {
	tok  *hsm.Token
	reg  *keys.Registry
	now  time.Time
	svc  *rewrap.Service
	mu   sync.Mutex
	recs []auditlog.Entry
}

func newFixture(t *testing.T) *fixture {
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	tok, err := hsm.Open(ctx, hsmtest.NewToken(t), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	f := &fixture{tok: tok, now: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
	if f.reg, err = keys.Load(ctx, tok, log); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Genesis(ctx, f.now, "rewrap test"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Register(ctx, "miner-1", f.now); err != nil {
		t.Fatal(err)
	}
	f.svc, err = rewrap.New(rewrap.Config{Keys: f.reg, Device: tok, Verified: envelope.NewVerifyCache(16),
		Sessions: func() int { return tok.Info().Sessions }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) seal(t *testing.T, txid string, plaintext []byte) string {
	t.Helper()
	v, err := f.reg.Active("miner-1")
	if err != nil {
		t.Fatal(err)
	}
	esc, err := f.reg.Escrow()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := f.reg.Signer()
	if err != nil {
		t.Fatal(err)
	}
	env, err := envelope.Seal(t.Context(), envelope.SealInput{TransactionID: txid, JobID: "job-" + txid, Plaintext: plaintext,
		Participants: []envelope.Recipient{{ID: "miner-1", KeyVersion: v.Number, Alg: v.Alg, Public: v.Public}},
		Escrow:       envelope.Recipient{KeyVersion: esc.Number, Alg: esc.Alg, Public: esc.Public}, CreatedAt: f.now}, signer)
	if err != nil {
		t.Fatal(err)
	}
	return env.Text()
}

func (f *fixture) record(_ context.Context, e auditlog.Entry, err error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		e.Code = err.Error()
	}
	f.recs = append(f.recs, e)
	return nil
}

// TestRun: a stale envelope moves to the participant's new version and
// opens on the device through it; a current one comes back as it was; bad
// items fail with their own errors; order is kept and each item is
// recorded once.
func TestRun(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	stale := f.seal(t, "tx-1", []byte("stale secret"))
	if _, err := f.reg.Rotate(ctx, "miner-1", f.now); err != nil {
		t.Fatal(err)
	}
	current := f.seal(t, "tx-2", []byte("current secret"))
	items := []rewrap.Item{
		{Envelope: stale, Ref: "a"},
		{Envelope: current, Ref: "b"},
		{Envelope: ""},
		{Envelope: "not an envelope"},
		{Envelope: stale, Ref: strings.Repeat("r", rewrap.MaxRefLength+1)},
	}
	out := f.svc.Run(ctx, items, f.record)
	if len(out) != len(items) || len(f.recs) != len(items) {
		t.Fatalf("%d outcomes, %d records for %d items", len(out), len(f.recs), len(items))
	}
	r := out[0].Result
	if out[0].Err != nil || r == nil || !r.Changed || r.Ref != "a" || len(r.Moved) != 1 ||
		r.Moved[0] != (rewrap.Moved{Participant: "miner-1", From: 1, To: 2}) {
		t.Fatalf("stale: %+v %v", r, out[0].Err)
	}
	env, err := envelope.ParseText(r.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Verify(f.reg.SigningKey); err != nil {
		t.Fatalf("rewrapped header does not verify: %v", err)
	}
	v2, err := f.reg.ParticipantVersion("miner-1", 2)
	if err != nil {
		t.Fatal(err)
	}
	i, err := env.ParticipantStanza("miner-1")
	if err != nil {
		t.Fatal(err)
	}
	if env.Header.Stanzas[i].KeyVersion != 2 {
		t.Fatalf("stanza version %d", env.Header.Stanzas[i].KeyVersion)
	}
	pt, err := f.tok.Open(ctx, env.OpenRequest(i, v2.Label, v2.Public))
	if err != nil || !bytes.Equal(pt, []byte("stale secret")) {
		t.Fatalf("open through v2: %q %v", pt, err)
	}
	if o := out[1]; o.Err != nil || o.Result.Changed || o.Result.Envelope != current || o.Result.Ref != "b" {
		t.Fatalf("current: %+v %v", o.Result, o.Err)
	}
	if !errors.Is(out[2].Err, rewrap.ErrBadItem) || out[2].Err.Error() != "envelope: required" {
		t.Fatalf("empty: %v", out[2].Err)
	}
	if !errors.Is(out[3].Err, envelope.ErrMalformed) {
		t.Fatalf("garbage: %v", out[3].Err)
	}
	if !errors.Is(out[4].Err, rewrap.ErrBadItem) {
		t.Fatalf("long ref: %v", out[4].Err)
	}
	var moved int
	for _, e := range f.recs {
		if e.Operation != "rewrap" {
			t.Errorf("entry: %+v", e)
		}
		if e.TransactionID == "tx-1" && e.Code == "" {
			moved++
			if e.KeyVersion != 1 || e.Detail != "moved miner-1 v1→v2" || len(e.Participants) != 1 {
				t.Errorf("moved entry: %+v", e)
			}
		}
	}
	if moved != 1 {
		t.Errorf("%d entries of a moved envelope", moved)
	}
}

// TestRecordRefusalWithholdsResult: when the access log refuses an
// envelope's entry, that envelope's result is not released.
func TestRecordRefusalWithholdsResult(t *testing.T) {
	f := newFixture(t)
	stale := f.seal(t, "tx-1", []byte("secret"))
	if _, err := f.reg.Rotate(t.Context(), "miner-1", f.now); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("log refused")
	out := f.svc.Run(t.Context(), []rewrap.Item{{Envelope: stale}}, func(context.Context, auditlog.Entry, error) error { return refused })
	if out[0].Result != nil || !errors.Is(out[0].Err, refused) {
		t.Fatalf("outcome: %+v", out[0])
	}
}

// TestNew: a missing collaborator is an error at construction.
func TestNew(t *testing.T) {
	for name, c := range map[string]rewrap.Config{
		"no keys":     {Device: (*hsm.Token)(nil), Verified: envelope.NewVerifyCache(1), Sessions: func() int { return 1 }},
		"no device":   {Keys: &keys.Registry{}, Verified: envelope.NewVerifyCache(1), Sessions: func() int { return 1 }},
		"no cache":    {Keys: &keys.Registry{}, Device: (*hsm.Token)(nil), Sessions: func() int { return 1 }},
		"no sessions": {Keys: &keys.Registry{}, Device: (*hsm.Token)(nil), Verified: envelope.NewVerifyCache(1)},
	} {
		if _, err := rewrap.New(c); err == nil {
			t.Errorf("%s: built", name)
		}
	}
}

// TestNoCgo: package rewrap links neither custody/hsm nor any cgo package
// (its tests use the real token; the package does not).
func TestNoCgo(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}} {{len .CgoFiles}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := false
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("go list: unexpected line %q", line)
		}
		seen = seen || f[0] == "custody/internal/rewrap"
		if f[0] == "custody/hsm" || strings.HasPrefix(f[0], "custody/hsm/") || (f[1] != "true" && f[2] != "0") {
			t.Errorf("rewrap depends on %s (cgo files: %s)", f[0], f[2])
		}
	}
	if !seen {
		t.Error("go list -deps does not show custody/internal/rewrap")
	}
}

// countingDevice is a Device that remembers how many batches ran at once.
type countingDevice struct {
	rewrap.Device
	mu        sync.Mutex
	now, most int
}

func (d *countingDevice) RewrapBatch(ctx context.Context, reqs []device.RewrapRequest) []device.RewrapResult {
	d.mu.Lock()
	d.now++
	d.most = max(d.most, d.now)
	d.mu.Unlock()
	defer func() { d.mu.Lock(); d.now--; d.mu.Unlock() }()
	return d.Device.RewrapBatch(ctx, reqs)
}

// TestRunOneShardPerSession: a run of many shards keeps at most one shard
// per token session on the device at a time, and still rewraps every item.
func TestRunOneShardPerSession(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	items := make([]rewrap.Item, 5*rewrap.ShardSize)
	for i := range items {
		items[i] = rewrap.Item{Envelope: f.seal(t, fmt.Sprintf("tx-%d", i), []byte("secret"))}
	}
	if _, err := f.reg.Rotate(ctx, "miner-1", f.now); err != nil {
		t.Fatal(err)
	}
	dev := &countingDevice{Device: f.tok}
	svc, err := rewrap.New(rewrap.Config{Keys: f.reg, Device: dev, Verified: envelope.NewVerifyCache(16),
		Sessions: func() int { return 2 }})
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range svc.Run(ctx, items, f.record) {
		if o.Err != nil || !o.Result.Changed {
			t.Fatalf("item %d: %+v", i, o)
		}
	}
	if dev.most > 2 {
		t.Errorf("%d shards on the device at once with 2 sessions", dev.most)
	}
}
