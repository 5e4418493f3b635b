// Package keys names and tracks the key pairs custodyd keeps on the token:
// one or more versions per participant, the audit escrow key and the
// envelope signing key.
//
// The token is the only store. Each key pair is a token object whose label
// says what it is:
//
//	custody/participant/<id>/v<n>   X25519, ECDH only
//	custody/escrow/v<n>             P-256, ECDH only, wrappable under a trusted KEK (backup)
//	custody/signing/v<n>            P-256, ECDSA only
//
// An envelope names its signing key by id "signing:v<n>" (labels hold '/',
// which the envelope id rule does not allow).
//
// Load lists those objects once at start; later registrations update the
// in-memory view under a lock, so lookups on the request path do not touch
// the token, except that a lookup that misses rereads it, bounded, and Watch
// rereads it periodically: several daemons may share the token (fleet.go).
// The highest version of a key is its active one. Creation
// goes through hsm, which never overwrites an existing object; registering
// an id twice is ErrExists.
//
// Registry is safe for concurrent use.
package keys

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"custody/internal/device"
	"custody/internal/envelope"
)

// Errors callers branch on.
var (
	ErrUnknownParticipant = errors.New("keys: unknown participant")
	ErrUnknownVersion     = errors.New("keys: no such key version")
	ErrExists             = errors.New("keys: participant already registered")
	ErrNoDaemonKeys       = errors.New("keys: escrow or signing key missing")
	// ErrDestroyed: the version existed and was retired: destroyed on the
	// token. Envelopes that still need it cannot be opened through it.
	ErrDestroyed = errors.New("keys: key version destroyed")
	// ErrTokenListing: a reread of the token listed none of the daemon's
	// keys the view had; the token is taken as unavailable (it wraps
	// device.ErrUnavailable) and the view is kept.
	ErrTokenListing = fmt.Errorf("keys: the token's listing lost the daemon's keys: %w", device.ErrUnavailable)
)

const (
	prefix            = "custody/"
	participantPrefix = prefix + "participant/"
	escrowPrefix      = prefix + "escrow/"
	signingPrefix     = prefix + "signing/"
)

// Device is what the registry needs from the token.
type Device interface {
	GenerateKeyPair(ctx context.Context, spec device.KeySpec) (device.KeyInfo, error)
	ListKeys(ctx context.Context, labelPrefix string) ([]device.KeyInfo, error)
	Sign(ctx context.Context, label string, digest []byte) ([]byte, error)
	// Key lifecycle (lifecycle.go).
	DestroyKeyPair(ctx context.Context, label string) error
	PutDataObject(ctx context.Context, d device.DataObject) error
	ListDataObjects(ctx context.Context, labelPrefix string) ([]device.DataObject, error)
}

// Version is one key pair on the token.
type Version struct {
	Number  uint32
	Label   string
	Alg     device.KeyAlg
	Public  []byte // nil for a destroyed version
	Created time.Time
	// RotateAfter is when the version is due for rotation (CKA_END_DATE of
	// its public object; for versions created before it was recorded,
	// Created plus the registry's rotation period). Zero when unknown.
	RotateAfter time.Time
	// Destroyed is when the version was retired; zero while it exists.
	Destroyed time.Time
}

// Fingerprint is the SHA-256 of the public key, hex.
func (v Version) Fingerprint() string {
	sum := sha256.Sum256(v.Public)
	return fmt.Sprintf("%x", sum)
}

// Registry is the in-memory view of the token's custody keys.
type Registry struct {
	dev Device
	log *slog.Logger

	rotateAfter time.Duration // see SetRotateAfter

	create  sync.Mutex  // serializes key creation and rescans (taken before scanMu)
	genesis atomic.Bool // the genesis marker was seen on the token (genesis.go)

	// Rescans of the token (fleet.go).
	scanMu       sync.Mutex
	lastScan     time.Time     // when the last rescan started
	missInterval time.Duration // least time between rescans lookup misses trigger
	rescans      atomic.Uint64
	coord        Coordinator // guarded by mu; nil: no fleet coordination

	mu           sync.RWMutex
	participants map[string][]Version // ascending by Number
	escrow       []Version
	signing      []Version
	signingPub   map[string]*ecdsa.PublicKey // by signing key id
}

// Load builds the registry from the token's objects.
func Load(ctx context.Context, dev Device, log *slog.Logger) (*Registry, error) {
	infos, err := dev.ListKeys(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("keys: listing the token: %w", err)
	}
	r := &Registry{dev: dev, log: log, participants: map[string][]Version{}, signingPub: map[string]*ecdsa.PublicKey{},
		rotateAfter: DefaultRotateAfter, missInterval: DefaultMissInterval, lastScan: time.Now()}
	for _, info := range infos {
		if err := r.add(info); err != nil {
			log.Warn("ignoring token object with an unexpected label", "label", info.Label, "err", err)
		}
	}
	if err := r.loadTombstones(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// add files one token key into the view. Callers hold mu or own r alone.
func (r *Registry) add(info device.KeyInfo) error {
	kind, id, n, err := parseLabel(info.Label)
	if err != nil {
		return err
	}
	v := Version{Number: n, Label: info.Label, Alg: info.Alg, Public: info.Public, Created: info.Created, RotateAfter: info.RotateAfter}
	switch kind {
	case "participant":
		r.participants[id] = insert(r.participants[id], v)
	case "escrow":
		r.escrow = insert(r.escrow, v)
	case "signing":
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), info.Public)
		if err != nil {
			return fmt.Errorf("signing key public point: %w", err)
		}
		r.signing = insert(r.signing, v)
		r.signingPub[signingKeyID(n)] = pub
	}
	return nil
}

func insert(vs []Version, v Version) []Version {
	vs = append(vs, v)
	sort.Slice(vs, func(i, j int) bool { return vs[i].Number < vs[j].Number })
	return vs
}

// ParticipantLabel is the token label of a participant key version.
func ParticipantLabel(id string, n uint32) string {
	return participantPrefix + id + "/v" + strconv.FormatUint(uint64(n), 10)
}

// EscrowLabelVersion returns the version of an escrow key label
// ("custody/escrow/v<N>", N canonical and nonzero); ok is false for any
// other label (participant, signing, log or foreign).
func EscrowLabelVersion(label string) (n uint32, ok bool) {
	kind, _, n, err := parseLabel(label)
	if err != nil || kind != "escrow" {
		return 0, false
	}
	return n, true
}

func parseLabel(label string) (kind, id string, n uint32, err error) {
	rest, ok := strings.CutPrefix(label, prefix)
	if !ok {
		return "", "", 0, errors.New("not a custody label")
	}
	kind, rest, _ = strings.Cut(rest, "/")
	if kind == "participant" {
		var found bool
		id, rest, found = strings.Cut(rest, "/")
		if !found || envelope.ValidateID(id) != nil {
			return "", "", 0, errors.New("bad participant id")
		}
	} else if kind != "escrow" && kind != "signing" {
		return "", "", 0, fmt.Errorf("unknown key kind %q", kind)
	}
	num, ok := strings.CutPrefix(rest, "v")
	v, perr := strconv.ParseUint(num, 10, 32)
	if !ok || perr != nil || v == 0 || strconv.FormatUint(v, 10) != num {
		return "", "", 0, errors.New("bad version suffix")
	}
	return kind, id, uint32(v), nil
}

// EnsureDaemonKeys creates escrow and signing key version 1 when the token
// has none, and returns the versions it created. (The escrow ceremony will
// take over escrow key creation.)
func (r *Registry) EnsureDaemonKeys(ctx context.Context, now time.Time) ([]Version, error) {
	r.create.Lock()
	defer r.create.Unlock()
	var created []Version
	for _, k := range []struct {
		have func() bool
		spec device.KeySpec
	}{
		{func() bool { return len(r.escrow) > 0 }, device.KeySpec{Label: escrowPrefix + "v1", Alg: device.P256, Usage: device.UsageDerive, Backup: true, Created: now}},
		{func() bool { return len(r.signing) > 0 }, device.KeySpec{Label: signingPrefix + "v1", Alg: device.P256, Usage: device.UsageSign, Created: now}},
	} {
		r.mu.RLock()
		have := k.have()
		r.mu.RUnlock()
		if have {
			continue
		}
		info, err := r.dev.GenerateKeyPair(ctx, k.spec)
		if err != nil {
			return created, fmt.Errorf("keys: creating %s: %w", k.spec.Label, err)
		}
		r.mu.Lock()
		err = r.add(info)
		r.mu.Unlock()
		if err != nil {
			return created, err
		}
		v := Version{Number: 1, Label: info.Label, Alg: info.Alg, Public: info.Public, Created: info.Created}
		r.log.Info("created daemon key on the token", "label", v.Label, "alg", v.Alg.String(), "sha256", v.Fingerprint())
		created = append(created, v)
	}
	return created, nil
}

// Register creates version 1 of a new participant's X25519 key on the token.
// An id already known (on this daemon's view or on the token) is ErrExists.
func (r *Registry) Register(ctx context.Context, id string, now time.Time) (Version, error) {
	if err := envelope.ValidateID(id); err != nil {
		return Version{}, err
	}
	r.create.Lock()
	defer r.create.Unlock()
	r.mu.RLock()
	_, known := r.participants[id]
	r.mu.RUnlock()
	if known {
		return Version{}, fmt.Errorf("%w: %s", ErrExists, id)
	}
	info, err := r.dev.GenerateKeyPair(ctx, device.KeySpec{Label: ParticipantLabel(id, 1), Alg: device.X25519, Usage: device.UsageDerive, Created: now, RotateAfter: now.Add(r.RotateAfter())})
	if errors.Is(err, device.ErrExists) {
		return Version{}, fmt.Errorf("%w: %s (on the token)", ErrExists, id)
	}
	if err != nil {
		return Version{}, err
	}
	r.mu.Lock()
	err = r.add(info)
	r.mu.Unlock()
	if err != nil {
		return Version{}, err
	}
	return Version{Number: 1, Label: info.Label, Alg: info.Alg, Public: info.Public, Created: info.Created, RotateAfter: info.RotateAfter}, nil
}

// Participant returns every version of a participant's key, oldest first.
// An id this view does not know rereads the token once (bounded: fleet.go),
// for a participant another daemon registered.
func (r *Registry) Participant(id string) ([]Version, error) {
	vs, err := r.participant(id)
	if errors.Is(err, ErrUnknownParticipant) && r.refreshAfterMiss(time.Now()) {
		vs, err = r.participant(id)
	}
	return vs, err
}

func (r *Registry) participant(id string) ([]Version, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	vs, ok := r.participants[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownParticipant, id)
	}
	return append([]Version(nil), vs...), nil
}

// again runs lookup, and once more after a bounded reread of the token if
// it answered one of the miss errors.
func again[T any](r *Registry, lookup func() (T, error), miss ...error) (T, error) {
	v, err := lookup()
	for _, m := range miss {
		if errors.Is(err, m) {
			if r.refreshAfterMiss(time.Now()) {
				return lookup()
			}
			break
		}
	}
	return v, err
}

// Active returns the version new envelopes are sealed to.
func (r *Registry) Active(id string) (Version, error) {
	vs, err := r.Participant(id)
	if err != nil {
		return Version{}, err
	}
	return vs[len(vs)-1], nil
}

// ParticipantVersion returns version n of a participant's key. A version
// this view does not know rereads the token once (bounded).
func (r *Registry) ParticipantVersion(id string, n uint32) (Version, error) {
	return again(r, func() (Version, error) {
		vs, err := r.participant(id)
		if err != nil {
			return Version{}, err
		}
		return find(vs, n, id)
	}, ErrUnknownParticipant, ErrUnknownVersion)
}

// Escrow returns the active escrow key version.
func (r *Registry) Escrow() (Version, error) {
	return again(r, func() (Version, error) {
		r.mu.RLock()
		defer r.mu.RUnlock()
		if len(r.escrow) == 0 {
			return Version{}, ErrNoDaemonKeys
		}
		return r.escrow[len(r.escrow)-1], nil
	}, ErrNoDaemonKeys)
}

// EscrowVersion returns version n of the escrow key. A version this view
// does not know (made by another daemon's ceremony) rereads the token once.
func (r *Registry) EscrowVersion(n uint32) (Version, error) {
	return again(r, func() (Version, error) {
		r.mu.RLock()
		defer r.mu.RUnlock()
		return find(r.escrow, n, "escrow")
	}, ErrUnknownVersion)
}

func find(vs []Version, n uint32, what string) (Version, error) {
	for _, v := range vs {
		if v.Number == n {
			if !v.Destroyed.IsZero() {
				return Version{}, fmt.Errorf("%w: %s v%d (retired %s)", ErrDestroyed, what, n, v.Destroyed.UTC().Format(time.DateOnly))
			}
			return v, nil
		}
	}
	return Version{}, fmt.Errorf("%w: %s v%d", ErrUnknownVersion, what, n)
}

// Signer returns the active signing key as an envelope.Signer.
func (r *Registry) Signer() (*Signer, error) {
	return again(r, func() (*Signer, error) {
		r.mu.RLock()
		defer r.mu.RUnlock()
		if len(r.signing) == 0 {
			return nil, ErrNoDaemonKeys
		}
		v := r.signing[len(r.signing)-1]
		return &Signer{dev: r.dev, label: v.Label, id: signingKeyID(v.Number)}, nil
	}, ErrNoDaemonKeys)
}

func signingKeyID(n uint32) string { return "signing:v" + strconv.FormatUint(uint64(n), 10) }

// SigningKey returns the public key of a signing key by its id (an
// envelope's signing key id); it has the shape of envelope.KeyLookup. An
// id this view does not know rereads the token once (bounded).
func (r *Registry) SigningKey(id string) (*ecdsa.PublicKey, error) {
	return again(r, func() (*ecdsa.PublicKey, error) {
		r.mu.RLock()
		defer r.mu.RUnlock()
		pub, ok := r.signingPub[id]
		if !ok {
			return nil, fmt.Errorf("%w: signing key %q", ErrUnknownVersion, id)
		}
		return pub, nil
	}, ErrUnknownVersion)
}

// Signer signs envelope headers inside the HSM.
type Signer struct {
	dev   Device
	label string // on the token
	id    string // in envelopes
}

// KeyID is the signing key's id in envelopes, "signing:v<n>".
func (s *Signer) KeyID() string { return s.id }

// Label is the signing key's token label.
func (s *Signer) Label() string { return s.label }

// Sign returns the 64-byte r||s ECDSA P-256 signature of digest.
func (s *Signer) Sign(ctx context.Context, digest []byte) ([]byte, error) {
	return s.dev.Sign(ctx, s.label, digest)
}

// DefaultRotateAfter is how old an active key may grow before it is due for
// rotation: the 90 days of the design document.
const DefaultRotateAfter = 90 * 24 * time.Hour

// Age describes the active keys of one kind for monitoring.
type Age struct {
	Count  int           // active keys of this kind
	Oldest time.Duration // age of the oldest active key (0 when its creation day is unknown)
	Due    int           // active keys older than the rotation period
}

// Ages reports, for "participant", "escrow" and "signing", how many active
// keys there are, how old the oldest is and how many are due for rotation
// (older than rotateAfter) at now. Creation is known to the day
// (CKA_START_DATE).
func (r *Registry) Ages(now time.Time, rotateAfter time.Duration) map[string]Age {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := map[string]Age{}
	add := func(kind string, v Version) {
		a := out[kind]
		a.Count++
		if !v.Created.IsZero() {
			age := now.Sub(v.Created)
			a.Oldest = max(a.Oldest, age)
			if age > rotateAfter {
				a.Due++
			}
		}
		out[kind] = a
	}
	for _, vs := range r.participants {
		add("participant", vs[len(vs)-1])
	}
	if len(r.escrow) > 0 {
		add("escrow", r.escrow[len(r.escrow)-1])
	}
	if len(r.signing) > 0 {
		add("signing", r.signing[len(r.signing)-1])
	}
	return out
}
