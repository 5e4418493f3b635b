package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"custody/internal/device"
)

// GenesisLabel is the CKO_DATA object that records, on the token, that
// the escrow key ceremony's genesis ran (or a restore ceremony brought the
// escrow key in). Audit decrypts are refused until it exists.
const GenesisLabel = prefix + "ceremony/genesis"

// ErrNoGenesis: genesis has not run on this token.
var ErrNoGenesis = errors.New("keys: the escrow key genesis ceremony has not run on this token")

type genesisMarker struct {
	V    int       `json:"v"`
	Time time.Time `json:"time"`
	How  string    `json:"how"` // "ceremony <request id>", "restore <request id>", "auto-genesis (demo)"
}

// Genesis creates the escrow and signing keys when the token lacks them
// (EnsureDaemonKeys) and then writes the genesis marker unless it exists.
// how says what ran it; it is stored on the token. It returns the key
// versions it created.
func (r *Registry) Genesis(ctx context.Context, now time.Time, how string) ([]Version, error) {
	created, err := r.EnsureDaemonKeys(ctx, now)
	if err != nil {
		return created, err
	}
	return created, r.MarkGenesis(ctx, now, how)
}

// MarkGenesis writes the genesis marker unless it is already there.
func (r *Registry) MarkGenesis(ctx context.Context, now time.Time, how string) error {
	if ok, err := r.GenesisDone(ctx); err != nil || ok {
		return err
	}
	v, _ := json.Marshal(genesisMarker{V: 1, Time: now.UTC().Truncate(time.Second), How: how})
	err := r.dev.PutDataObject(ctx, device.DataObject{Label: GenesisLabel, Value: v})
	if err != nil && !errors.Is(err, device.ErrExists) {
		return fmt.Errorf("keys: writing the genesis marker: %w", err)
	}
	r.genesis.Store(true)
	return nil
}

// GenesisDone reports whether the genesis marker is on the token. A
// positive answer is remembered; a negative one asks the token again next
// time.
func (r *Registry) GenesisDone(ctx context.Context) (bool, error) {
	if r.genesis.Load() {
		return true, nil
	}
	ds, err := r.dev.ListDataObjects(ctx, GenesisLabel)
	if err != nil {
		return false, fmt.Errorf("keys: looking for the genesis marker: %w", err)
	}
	for _, d := range ds {
		if d.Label == GenesisLabel {
			r.genesis.Store(true)
			return true, nil
		}
	}
	return false, nil
}

// Adopt files a key pair that appeared on the token outside the registry
// (an escrow key restored from a backup) into the view.
func (r *Registry) Adopt(info device.KeyInfo) error {
	r.create.Lock()
	defer r.create.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.add(info)
}

// EscrowVersions returns every escrow key version, oldest first, retired
// ones included (Destroyed set).
func (r *Registry) EscrowVersions() []Version {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return append([]Version(nil), r.escrow...)
}
