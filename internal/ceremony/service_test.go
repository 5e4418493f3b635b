package ceremony_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/ceremony"
	"custody/internal/device"
	"custody/internal/keys"
)

// The Service without a socket or a token: a fake device and a fake key
// registry, a clock the test moves. The end-to-end proof over the socket,
// as the officers' own Unix users, is internal/server's ceremony tests.

// fakeDevice holds the access log's Ed25519 key in memory; it has no
// escrow keys to back up (FindKey finds nothing).
type fakeDevice struct {
	mu  sync.Mutex
	key ed25519.PrivateKey
}

func (d *fakeDevice) FindKey(context.Context, string) (device.KeyInfo, error) {
	return device.KeyInfo{}, device.ErrNotFound
}
func (d *fakeDevice) WrapForBackup(context.Context, string, []byte, []byte) ([]byte, error) {
	return nil, errors.New("fake device: no backups")
}
func (d *fakeDevice) RestoreFromBackup(context.Context, string, []byte, []byte, []byte) (device.KeyInfo, error) {
	return device.KeyInfo{}, errors.New("fake device: no restores")
}
func (d *fakeDevice) DestroyKeyPair(context.Context, string) error { return device.ErrNotFound }
func (d *fakeDevice) Open(context.Context, device.OpenRequest) ([]byte, error) {
	return nil, errors.New("fake device: no envelopes")
}
func (d *fakeDevice) SignEd25519(_ context.Context, _ string, msg []byte) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return ed25519.Sign(d.key, msg), nil
}
func (d *fakeDevice) EnsureEd25519(context.Context, string, time.Time) (ed25519.PublicKey, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	created := d.key == nil
	if created {
		_, d.key, _ = ed25519.GenerateKey(rand.Reader)
	}
	return d.key.Public().(ed25519.PublicKey), created, nil
}
func (d *fakeDevice) TokenID() (string, string) { return "fake token", "0001" }

// fakeKeys is an escrow key registry in memory; rotations counts what
// RotateEscrow did.
type fakeKeys struct {
	mu        sync.Mutex
	versions  []keys.Version
	rotations int
}

func newFakeKeys() *fakeKeys {
	k := &fakeKeys{}
	k.add()
	return k
}

func (k *fakeKeys) add() keys.Version {
	pub := make([]byte, 32)
	rand.Read(pub)
	v := keys.Version{Number: uint32(len(k.versions) + 1), Public: pub}
	v.Label = fmt.Sprintf("custody/escrow/v%d", v.Number)
	k.versions = append(k.versions, v)
	return v
}

func (k *fakeKeys) GenesisDone(context.Context) (bool, error) { return true, nil }
func (k *fakeKeys) Genesis(context.Context, time.Time, string) ([]keys.Version, error) {
	return nil, nil
}
func (k *fakeKeys) MarkGenesis(context.Context, time.Time, string) error { return nil }
func (k *fakeKeys) Adopt(device.KeyInfo) error                           { return errors.New("fake keys: no adopt") }
func (k *fakeKeys) Escrow() (keys.Version, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.versions[len(k.versions)-1], nil
}
func (k *fakeKeys) EscrowVersion(n uint32) (keys.Version, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if n == 0 || int(n) > len(k.versions) {
		return keys.Version{}, keys.ErrUnknownVersion
	}
	return k.versions[n-1], nil
}
func (k *fakeKeys) EscrowVersions() []keys.Version {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]keys.Version(nil), k.versions...)
}
func (k *fakeKeys) Signer() (*keys.Signer, error) { return nil, keys.ErrNoDaemonKeys }
func (k *fakeKeys) RotateEscrow(context.Context, time.Time) (keys.Version, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.rotations++
	return k.add(), nil
}
func (k *fakeKeys) Retire(context.Context, string, bool, uint32, time.Time, string) (keys.Version, error) {
	return keys.Version{}, errors.New("fake keys: no retire")
}

type serviceKit struct {
	svc  *ceremony.Service
	offs []ceremony.Officer
	dev  *fakeDevice
	keys *fakeKeys
	now  time.Time
	dir  string
}

func newServiceKit(t *testing.T) *serviceKit {
	t.Helper()
	offs, ok := newOfficerSet(t, 3)
	k := &serviceKit{dev: &fakeDevice{}, keys: newFakeKeys(), now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
		dir: filepath.Join(t.TempDir(), "out")}
	for _, o := range ok {
		k.offs = append(k.offs, o.o)
	}
	var err error
	k.svc, err = ceremony.NewService(ceremony.ServiceConfig{Officers: offs, OutputDir: k.dir, Device: k.dev, Keys: k.keys,
		LogOrigin: "custody.test/log", LogKeyLabel: "custody/log/v1", Now: func() time.Time { return k.now }})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// approved creates a rotate request by o1 and has o2 approve it.
func (k *serviceKit) approved(t *testing.T) ceremony.Request {
	t.Helper()
	p, err := k.svc.Request(context.Background(), k.offs[0], ceremony.Input{Kind: ceremony.KindRotate, M: 1, Window: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := k.svc.Approve(k.offs[1], p.Request.ID, p.Request.Hash(), p.Request.Nonce); err != nil || n != 1 {
		t.Fatalf("approve: %d, %v", n, err)
	}
	return p.Request
}

// TestServiceRotate: request → approve → claim → run, the transcript
// signed by the log key and fetchable by any officer; a second claim of
// the same request is refused.
func TestServiceRotate(t *testing.T) {
	ctx := context.Background()
	k := newServiceKit(t)
	r := k.approved(t)
	if r.Params["current_label"] != "custody/escrow/v1" || r.Params["token"] != "faketoken (serial 0001)" {
		t.Fatalf("params %v: want the current version and the token named", r.Params)
	}
	c, err := k.svc.Claim(ctx, ceremony.KindRotate, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if k.keys.rotations != 0 {
		t.Fatal("Claim touched the registry before Run")
	}
	res, err := k.svc.Run(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if k.keys.rotations != 1 || len(res.Fingerprints) != 1 || res.Fingerprints[0].Label != "custody/escrow/v2" {
		t.Fatalf("rotations %d, fingerprints %+v: want one rotation to v2", k.keys.rotations, res.Fingerprints)
	}
	st, err := os.Stat(res.Transcript.Path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("transcript %s: %v, mode %v; want 0600", res.Transcript.Path, err, st.Mode())
	}
	signed, err := k.svc.Fetch(k.offs[2], r.ID, "transcript.txt")
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := note.NewEd25519VerifierKey("custody.test/log", k.dev.key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	logKey, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ceremony.VerifyTranscript(signed, logKey, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v.Transcript.RequestHash != r.Hash() {
		t.Fatalf("transcript names request %s, want %s", v.Transcript.RequestHash, r.Hash())
	}
	if _, err := k.svc.Claim(ctx, ceremony.KindRotate, r.ID); !errors.Is(err, ceremony.ErrUnknownRequest) {
		t.Fatalf("second claim: %v, want ErrUnknownRequest", err)
	}
	if _, err := k.svc.Fetch(k.offs[2], r.ID, "share-1-o1.age"); !errors.Is(err, ceremony.ErrUnknownRequest) {
		t.Fatalf("fetch of a file the request did not write: %v, want ErrUnknownRequest", err)
	}
	if k.keys.rotations != 1 {
		t.Fatalf("rotations %d after a refused claim", k.keys.rotations)
	}
}

// TestServiceStale: the registry changes between approval and execution
// (another rotation); the claim is refused as stale and nothing runs.
func TestServiceStale(t *testing.T) {
	ctx := context.Background()
	k := newServiceKit(t)
	r := k.approved(t)
	k.keys.mu.Lock()
	k.keys.add() // v2 made elsewhere: the approved "v1 becomes decrypt-only" is no longer true
	k.keys.mu.Unlock()
	if _, err := k.svc.Claim(ctx, ceremony.KindRotate, r.ID); !errors.Is(err, ceremony.ErrStale) {
		t.Fatalf("claim after the registry changed: %v, want ErrStale", err)
	}
	if k.keys.rotations != 0 {
		t.Fatal("a stale request ran")
	}
}

// TestServiceRefusals: what a claim or a request refuses before anything
// runs; the fake clock closes the window.
func TestServiceRefusals(t *testing.T) {
	ctx := context.Background()
	k := newServiceKit(t)
	p, err := k.svc.Request(ctx, k.offs[0], ceremony.Input{Kind: ceremony.KindRotate, M: 1, Window: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.svc.Claim(ctx, ceremony.KindRotate, p.Request.ID); !errors.Is(err, ceremony.ErrNotApproved) {
		t.Fatalf("claim without approvals: %v, want ErrNotApproved", err)
	}
	if _, err := k.svc.Claim(ctx, ceremony.KindRetire, p.Request.ID); !errors.Is(err, ceremony.ErrUnknownRequest) {
		t.Fatalf("claim as another kind: %v, want ErrUnknownRequest", err)
	}
	k.now = k.now.Add(11 * time.Minute)
	if _, err := k.svc.Approve(k.offs[1], p.Request.ID, p.Request.Hash(), p.Request.Nonce); !errors.Is(err, ceremony.ErrExpired) {
		t.Fatalf("approval after the window: %v, want ErrExpired", err)
	}
	for _, c := range []struct {
		name string
		in   ceremony.Input
		want error
	}{
		{"window too short", ceremony.Input{Kind: ceremony.KindRotate, M: 1, Window: "1s"}, ceremony.ErrInvalidInput},
		{"m below the floor", ceremony.Input{Kind: ceremony.KindRetire, M: 1, Params: map[string]string{"version": "1", "rewrapped_count": "0"}}, ceremony.ErrInvalidInput},
		{"a param the daemon writes", ceremony.Input{Kind: ceremony.KindRotate, M: 1, Params: map[string]string{"effect": "nothing"}}, ceremony.ErrInvalidInput},
		{"retire without its count", ceremony.Input{Kind: ceremony.KindRetire, M: 2, Params: map[string]string{"version": "1"}}, ceremony.ErrRetireUnconfirmed},
		{"backup without an SO PIN record", ceremony.Input{Kind: ceremony.KindBackup, M: 2}, ceremony.ErrNoSOPIN},
		{"unknown kind", ceremony.Input{Kind: "export", M: 2}, ceremony.ErrInvalidInput},
	} {
		if _, err := k.svc.Request(ctx, k.offs[0], c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := k.svc.SubmitShare(k.offs[1], p.Request.ID, []byte("not a share")); !errors.Is(err, ceremony.ErrFormat) {
		t.Fatalf("malformed share: %v, want ErrFormat", err)
	}
}

// TestServiceReplaceOfficers: a changed officers set cancels what is pending.
func TestServiceReplaceOfficers(t *testing.T) {
	k := newServiceKit(t)
	r := k.approved(t)
	if changed, cancelled := k.svc.ReplaceOfficers(k.svc.Officers()); changed || cancelled != nil {
		t.Fatalf("the same officers: changed %v, cancelled %v", changed, cancelled)
	}
	other, _ := newOfficerSet(t, 3)
	if changed, cancelled := k.svc.ReplaceOfficers(other); !changed || len(cancelled) != 1 || cancelled[0] != r.ID {
		t.Fatalf("new officers: changed %v, cancelled %v; want %s cancelled", changed, cancelled, r.ID)
	}
	if _, err := k.svc.Claim(context.Background(), ceremony.KindRotate, r.ID); !errors.Is(err, ceremony.ErrUnknownRequest) {
		t.Fatalf("claim of a cancelled request: %v, want ErrUnknownRequest", err)
	}
}
