package keys

// Key lifecycle: rotation, due dates, retirement.
//
// State lives with the token's objects, so a restarted daemon rebuilds the
// same view from the token alone:
//
//   - created: CKA_START_DATE of both objects (a day);
//   - rotate-after: CKA_END_DATE of the public object (a day), set at
//     creation to created + the rotation period; keys created before that
//     was recorded are due at created + the registry's period;
//   - active: the highest version that is not destroyed (retiring the active
//     version is refused, so that is always the newest);
//   - decrypt-only: every older version still on the token (no new
//     envelope is sealed to it; it still opens and is the source of rewraps);
//   - destroyed: a tombstone, a public CKO_DATA token object labelled
//     custody/destroyed/<key label without "custody/"> whose value is
//     {"v":1,"destroyed":RFC 3339,"by":principal}, written before the key
//     pair is destroyed. A tombstone whose key pair is still there (a crash
//     between the two steps) counts as destroyed; retiring again finishes.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"custody/internal/device"
)

// State of a key version.
type State string

const (
	StateActive      State = "active"       // new envelopes are sealed to it
	StateDecryptOnly State = "decrypt-only" // older, still on the token
	StateDestroyed   State = "destroyed"    // retired: gone from the token
)

// More errors of the lifecycle.
var (
	// ErrActiveVersion: the active version cannot be retired; rotate first.
	ErrActiveVersion = errors.New("keys: the active version cannot be retired")
)

const destroyedPrefix = prefix + "destroyed/"

// tombstone is the value of a destroyed-version data object.
type tombstone struct {
	V         int       `json:"v"`
	Destroyed time.Time `json:"destroyed"`
	By        string    `json:"by,omitempty"`
}

// SetRotateAfter sets the rotation period (DefaultRotateAfter unless set;
// d <= 0 restores the default). It applies to versions created from now on
// (their CKA_END_DATE) and to older versions that carry no rotate-after date.
func (r *Registry) SetRotateAfter(d time.Duration) {
	if d <= 0 {
		d = DefaultRotateAfter
	}
	r.mu.Lock()
	r.rotateAfter = d
	r.mu.Unlock()
}

// RotateAfter returns the rotation period.
func (r *Registry) RotateAfter() time.Duration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.rotateAfter
}

// loadTombstones marks the versions the token's tombstones name as destroyed.
func (r *Registry) loadTombstones(ctx context.Context) error {
	ds, err := r.dev.ListDataObjects(ctx, destroyedPrefix)
	if err != nil {
		return fmt.Errorf("keys: listing retired versions: %w", err)
	}
	for _, d := range ds {
		label := prefix + strings.TrimPrefix(d.Label, destroyedPrefix)
		kind, id, n, err := parseLabel(label)
		var ts tombstone
		if err == nil {
			err = json.Unmarshal(d.Value, &ts)
		}
		if err != nil || ts.V != 1 || ts.Destroyed.IsZero() || kind == "signing" {
			r.log.Warn("ignoring an unexpected tombstone on the token", "label", d.Label, "err", err)
			continue
		}
		vs := r.escrow
		if kind == "participant" {
			vs = r.participants[id]
		}
		found := false
		for i := range vs {
			if vs[i].Number == n {
				found = true
				vs[i].Destroyed = ts.Destroyed
				r.log.Warn("a retired key version is still on the token; retire it again to finish", "label", label)
			}
		}
		if !found {
			vs = insert(vs, Version{Number: n, Label: label, Destroyed: ts.Destroyed})
		}
		if kind == "participant" {
			r.participants[id] = vs
		} else {
			r.escrow = vs
		}
	}
	return nil
}

// VersionStatus is one key version as operators see it.
type VersionStatus struct {
	Version
	State State
	// Age is how long ago the version was created (0 if unknown).
	Age time.Duration
}

// KeyStatus is one key (a participant's, or the escrow key) with its versions.
type KeyStatus struct {
	Kind     string // "participant" or "escrow"
	ID       string // participant id; "" for escrow
	Active   uint32 // active version number
	Versions []VersionStatus
	// DueAt is when the active version is due for rotation (zero if unknown).
	DueAt time.Time
	// Due reports DueAt <= now.
	Due bool
	// Rewrap reports that an older version still exists: envelopes may
	// need a rewrap before it can be retired.
	Rewrap bool
}

func (r *Registry) status(kind, id string, vs []Version, now time.Time) KeyStatus {
	ks := KeyStatus{Kind: kind, ID: id}
	active := -1
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].Destroyed.IsZero() {
			active = i
			break
		}
	}
	for i, v := range vs {
		st := VersionStatus{Version: v, State: StateDecryptOnly}
		switch {
		case !v.Destroyed.IsZero():
			st.State = StateDestroyed
		case i == active:
			st.State = StateActive
		default:
			ks.Rewrap = true
		}
		if !v.Created.IsZero() {
			st.Age = max(0, now.Sub(v.Created))
		}
		if st.RotateAfter.IsZero() && !v.Created.IsZero() {
			st.RotateAfter = v.Created.Add(r.rotateAfter)
		}
		ks.Versions = append(ks.Versions, st)
	}
	if active >= 0 {
		a := ks.Versions[active]
		ks.Active, ks.DueAt = a.Number, a.RotateAfter
		ks.Due = !a.RotateAfter.IsZero() && !now.Before(a.RotateAfter)
	}
	return ks
}

// List returns every participant key (sorted by id) and then the escrow
// key, with each version's state and age and whether rotation is due at now.
func (r *Registry) List(now time.Time) []KeyStatus {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := make([]string, 0, len(r.participants))
	for id := range r.participants {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]KeyStatus, 0, len(ids)+1)
	for _, id := range ids {
		out = append(out, r.status("participant", id, r.participants[id], now))
	}
	if len(r.escrow) > 0 {
		out = append(out, r.status("escrow", "", r.escrow, now))
	}
	return out
}

// Status returns the KeyStatus of one participant (an id this view does
// not know rereads the token once, bounded).
func (r *Registry) Status(id string, now time.Time) (KeyStatus, error) {
	return again(r, func() (KeyStatus, error) {
		r.mu.RLock()
		defer r.mu.RUnlock()
		vs, ok := r.participants[id]
		if !ok {
			return KeyStatus{}, fmt.Errorf("%w: %s", ErrUnknownParticipant, id)
		}
		return r.status("participant", id, vs, now), nil
	}, ErrUnknownParticipant)
}

// Due returns the participants whose active version is due for rotation at now.
func (r *Registry) Due(now time.Time) []string {
	var out []string
	for _, ks := range r.List(now) {
		if ks.Kind == "participant" && ks.Due {
			out = append(out, ks.ID)
		}
	}
	return out
}

// Rotate creates version n+1 of participant id's X25519 key on the token,
// where n is the highest version ever created (destroyed ones included: a
// number is never reused), and makes it active: new envelopes are sealed to
// it, older versions become decrypt-only. Its rotate-after date is now plus
// the rotation period. With a coordinator (a fleet) it first takes the
// key's rotation lease (ErrRotationBusy if another daemon holds it) and
// rereads the token under it, so n is the fleet's highest version.
func (r *Registry) Rotate(ctx context.Context, id string, now time.Time) (Version, error) {
	v, _, err := r.rotate(ctx, id, now, false)
	return v, err
}

// RotateIfDue is Rotate for the rotation pass: under the lease and after
// the reread it rotates only if the active version is still due at now
// (another daemon may have rotated it a moment ago). rotated is false, with
// a nil error, when it was not due any more.
func (r *Registry) RotateIfDue(ctx context.Context, id string, now time.Time) (v Version, rotated bool, err error) {
	return r.rotate(ctx, id, now, true)
}

func (r *Registry) rotate(ctx context.Context, id string, now time.Time, ifDue bool) (Version, bool, error) {
	if _, err := r.Participant(id); err != nil {
		return Version{}, false, err // no lease for an id nobody registered
	}
	release, err := r.claimRotation(ctx, "participant/"+id)
	if err != nil {
		return Version{}, false, err
	}
	defer release(context.WithoutCancel(ctx))
	r.create.Lock()
	defer r.create.Unlock()
	if r.coordinated() {
		if err := r.refreshUnderCreate(ctx); err != nil {
			return Version{}, false, fmt.Errorf("keys: rereading the token before rotating %s: %w", id, err)
		}
	}
	r.mu.RLock()
	vs, ok := r.participants[id]
	var due bool
	if ok {
		due = r.status("participant", id, vs, now).Due
	}
	r.mu.RUnlock()
	if !ok {
		return Version{}, false, fmt.Errorf("%w: %s", ErrUnknownParticipant, id)
	}
	if ifDue && !due {
		return Version{}, false, nil
	}
	n := vs[len(vs)-1].Number + 1
	v, err := r.createVersion(ctx, device.KeySpec{Label: ParticipantLabel(id, n), Alg: device.X25519, Usage: device.UsageDerive}, now)
	return v, err == nil, err
}

// RotateEscrow creates the next escrow key version (P-256, backup-capable,
// as EnsureDaemonKeys does) and makes it active. Rewrap then moves escrow
// stanzas to it. (The escrow rotation ceremony calls this.) With a
// coordinator it takes the escrow's rotation lease and rereads the token
// first, as Rotate does.
func (r *Registry) RotateEscrow(ctx context.Context, now time.Time) (Version, error) {
	release, err := r.claimRotation(ctx, "escrow")
	if err != nil {
		return Version{}, err
	}
	defer release(context.WithoutCancel(ctx))
	r.create.Lock()
	defer r.create.Unlock()
	if r.coordinated() {
		if err := r.refreshUnderCreate(ctx); err != nil {
			return Version{}, fmt.Errorf("keys: rereading the token before rotating the escrow key: %w", err)
		}
	}
	r.mu.RLock()
	if len(r.escrow) == 0 {
		r.mu.RUnlock()
		return Version{}, ErrNoDaemonKeys
	}
	n := r.escrow[len(r.escrow)-1].Number + 1
	r.mu.RUnlock()
	return r.createVersion(ctx, device.KeySpec{Label: fmt.Sprintf("%sv%d", escrowPrefix, n), Alg: device.P256, Usage: device.UsageDerive, Backup: true}, now)
}

// createVersion generates spec's key pair with dates and files it. Callers
// hold r.create.
func (r *Registry) createVersion(ctx context.Context, spec device.KeySpec, now time.Time) (Version, error) {
	spec.Created = now
	spec.RotateAfter = now.Add(r.RotateAfter())
	info, err := r.dev.GenerateKeyPair(ctx, spec)
	if err != nil {
		return Version{}, fmt.Errorf("keys: creating %s: %w", spec.Label, err)
	}
	r.mu.Lock()
	err = r.add(info)
	r.mu.Unlock()
	if err != nil {
		return Version{}, err
	}
	_, _, n, _ := parseLabel(info.Label)
	v := Version{Number: n, Label: info.Label, Alg: info.Alg, Public: info.Public, Created: info.Created, RotateAfter: info.RotateAfter}
	r.log.Info("key version created", "label", v.Label, "alg", v.Alg.String(), "sha256", v.Fingerprint(), "rotate_after", v.RotateAfter.Format(time.DateOnly))
	return v, nil
}

// Retire destroys version n of participant id (id "" with escrow true: the
// escrow key) on the token: it writes the tombstone, then destroys the key
// pair. The active version is refused (ErrActiveVersion); an unknown one is
// ErrUnknownVersion; one already retired is ErrDestroyed unless its key pair
// is still on the token (an interrupted retirement), which is finished.
// Afterwards ParticipantVersion (EscrowVersion) answers ErrDestroyed for it.
// Confirming that no envelope still needs the version is the caller's job.
func (r *Registry) Retire(ctx context.Context, id string, escrow bool, n uint32, now time.Time, by string) (Version, error) {
	r.create.Lock()
	defer r.create.Unlock()
	r.mu.RLock()
	vs := r.escrow
	what := "escrow"
	if !escrow {
		var ok bool
		if vs, ok = r.participants[id]; !ok {
			r.mu.RUnlock()
			return Version{}, fmt.Errorf("%w: %s", ErrUnknownParticipant, id)
		}
		what = id
	}
	vs = append([]Version(nil), vs...)
	r.mu.RUnlock()
	idx := -1
	for i, v := range vs {
		if v.Number == n {
			idx = i
		}
	}
	if idx < 0 {
		return Version{}, fmt.Errorf("%w: %s v%d", ErrUnknownVersion, what, n)
	}
	v := vs[idx]
	if idx == len(vs)-1 {
		return Version{}, fmt.Errorf("%w: %s v%d is active", ErrActiveVersion, what, n)
	}
	if !v.Destroyed.IsZero() && v.Public == nil {
		return Version{}, fmt.Errorf("%w: %s v%d", ErrDestroyed, what, n)
	}
	ts := tombstone{V: 1, Destroyed: now.UTC().Truncate(time.Second), By: by}
	if !v.Destroyed.IsZero() {
		ts.Destroyed = v.Destroyed
	}
	val, _ := json.Marshal(ts)
	err := r.dev.PutDataObject(ctx, device.DataObject{Label: destroyedPrefix + strings.TrimPrefix(v.Label, prefix), Value: val})
	if err != nil && !errors.Is(err, device.ErrExists) {
		return Version{}, fmt.Errorf("keys: recording the retirement of %s: %w", v.Label, err)
	}
	if err := r.dev.DestroyKeyPair(ctx, v.Label); err != nil && !errors.Is(err, device.ErrNotFound) {
		return Version{}, fmt.Errorf("keys: destroying %s (recorded as destroyed; retire again to finish): %w", v.Label, err)
	}
	r.mu.Lock()
	list := &r.escrow
	if !escrow {
		l := r.participants[id]
		list = &l
	}
	for i := range *list {
		if (*list)[i].Number == n {
			(*list)[i].Destroyed, (*list)[i].Public = ts.Destroyed, nil
			v = (*list)[i]
		}
	}
	if !escrow {
		r.participants[id] = *list
	}
	r.mu.Unlock()
	r.log.Info("key version retired and destroyed on the token", "label", v.Label, "by", by)
	return v, nil
}

// Log returns the registry's logger (for tools that load a second view).
func (r *Registry) Log() *slog.Logger { return r.log }
