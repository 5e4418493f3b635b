package auditlog

import (
	"errors"
	"fmt"
	"time"

	"custody/internal/config/duration"
)

// Config is the access log's configuration, embedded in the daemon's as
// "access_log".
type Config struct {
	// Dir holds the log (entries, checkpoints, checkpoint, log.pub, LOCK).
	Dir string `json:"dir"`
	// CheckpointEvery: a checkpoint is signed once this many entries were
	// appended since the last one...
	CheckpointEvery int `json:"checkpoint_every"`
	// CheckpointInterval: ...or once this much time passed with new entries
	// (a Go duration, "1s"), whichever comes first, and at Close.
	CheckpointInterval duration.Duration `json:"checkpoint_interval"`
	// Origin names the log: the checkpoint's first line and the signing
	// key's name in the signed note (no spaces, no "+").
	Origin string `json:"origin"`
	// SigningKeyLabel is the token label of the Ed25519 checkpoint key.
	SigningKeyLabel string `json:"signing_key_label"`
}

// Defaults.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = time.Second
	DefaultOrigin             = "custodyd/access-log"
	DefaultSigningKeyLabel    = "custody/log/v1"
)

// DefaultConfig is the configuration with every default; Dir is "log".
func DefaultConfig() Config {
	return Config{Dir: "log", CheckpointEvery: DefaultCheckpointEvery, CheckpointInterval: duration.Duration(DefaultCheckpointInterval),
		Origin: DefaultOrigin, SigningKeyLabel: DefaultSigningKeyLabel}
}

// ErrConfig: an invalid Config. The message names the field.
var ErrConfig = errors.New("invalid access log configuration")

// Validate checks c; each error names the field as access_log.<json name>.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: access_log.%s: %s", ErrConfig, field, fmt.Sprintf(format, args...))
	}
	if c.Dir == "" {
		return bad("dir", "required")
	}
	if c.CheckpointEvery < 1 || c.CheckpointEvery > 1_000_000 {
		return bad("checkpoint_every", "%d is not in 1..1000000", c.CheckpointEvery)
	}
	if d := c.CheckpointInterval; d.Std() < 10*time.Millisecond || d.Std() > time.Hour {
		return bad("checkpoint_interval", "%s is not in 10ms..1h", d)
	}
	if !isKeyName(c.Origin) {
		return bad("origin", "%q must be non-empty, without spaces or \"+\"", c.Origin)
	}
	if c.SigningKeyLabel == "" || len(c.SigningKeyLabel) > 128 {
		return bad("signing_key_label", "must be 1..128 bytes")
	}
	return nil
}
