// Package auditlog is custodyd's access log: every access decision, as an
// entry in an append-only, tamper-evident log, and the offline tools that
// verify it.
//
// # Entries
//
// An Entry records who (uid, gid, pid, executable, principal), what
// (operation, transaction, participant, key and version, field names),
// why (purpose, court order, its Vault version and document hash, use
// number) and the outcome with its error code. Never plaintext values,
// PINs, DEKs or key material. EncodeEntry writes format version 1
// (docs/auditlog.md): one canonical JSON line carrying "v" and the entry's
// index "i"; ParseEntry is strict (unknown members, other versions, a
// wrong index or non-canonical bytes are ErrMalformed) and fuzzed.
// Normalize bounds every string and list (most are the caller's word) and
// marks what it cut in Clipped; Log.Append applies it, so no entry is ever
// refused for its size.
//
// # Durability (Log)
//
// Open takes the directory's LOCK (flock: one writer), re-reads and
// re-hashes every entry, verifies every stored checkpoint against the
// recomputed tree, truncates a torn tail (logged) and refuses damage a
// crash cannot explain (ErrCorrupt). Record hands the entry to one writer
// goroutine which writes every queued entry with one write and one
// fdatasync (group commit) and acknowledges only then: Record returns nil
// only once the entry is durable. A failed write is undone (truncate to
// the last acknowledged byte) and every Record fails with ErrUnavailable
// until a write succeeds again; the entries file being replaced or its
// directory removed is a failure too. Nothing is dropped or reordered.
//
// # Tamper evidence
//
// Entries are the leaves of an RFC 6962 tree (golang.org/x/mod/sumdb/tlog).
// Checkpoints (C2SP tlog-checkpoint in a signed note) are signed every
// CheckpointEvery entries or CheckpointInterval, whichever first, and at
// Close, by an Ed25519 key inside the HSM (DeviceSigner over CKM_EDDSA);
// each is appended to "checkpoints" and the latest replaces "checkpoint"
// atomically. log.pub holds the note verifier key.
//
// # Reviewers
//
// Verify, Prove, CheckBundle and ReadEntries need only a copy of the
// directory and the public key: a key the reviewer holds, never the
// directory's own log.pub (custodyctl log pin). Verify reports where the log stops being
// trustworthy: a removed, reordered or inserted entry at its exact index
// (its "i" no longer matches its position), a modified one between the
// last checkpoint that matches and the first that does not.
//
// # Limits
//
// The Log keeps every tree hash and entry offset in memory (about 72 bytes
// per entry) and Open reads the whole log (about a second per million
// entries). A crash is handled; a power loss that persists a later page of
// an unacknowledged batch but not an earlier one looks like tampering
// (ErrCorrupt) rather than a torn tail. Entries after the last checkpoint
// are not yet signed: a checkpoint interval bounds that window.
//
// SlogRecorder remains for tools and tests that need no durable log.
package auditlog

import (
	"context"
	"log/slog"
	"time"
)

// Outcome of one decision.
type Outcome string

const (
	Allowed Outcome = "allowed" // the operation was permitted and succeeded
	Denied  Outcome = "denied"  // policy refused it
	Failed  Outcome = "failed"  // permitted, but it failed (bad envelope, HSM error, …)
)

// Caller is the peer process, from SO_PEERCRED and /proc.
type Caller struct {
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
	PID        int32  `json:"pid"`
	Executable string `json:"exe,omitempty"`
}

// EndUser is the end-user context an application forwards. It is recorded,
// never trusted for authorization.
type EndUser struct {
	IP        string `json:"ip,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// Entry is one decision.
type Entry struct {
	Time          time.Time `json:"time"`
	Operation     string    `json:"op"` // e.g. "decrypt", "encrypt", "register"
	Caller        Caller    `json:"caller"`
	Principal     string    `json:"principal,omitempty"`
	TransactionID string    `json:"transaction_id,omitempty"`
	JobID         string    `json:"job_id,omitempty"`
	Participant   string    `json:"participant,omitempty"`  // acting as, or registered
	Participants  []string  `json:"participants,omitempty"` // recipients of an encrypt
	SealedBy      string    `json:"sealed_by,omitempty"`    // the principal that sealed the envelope (envelope v2): encrypt, decrypt, audit decrypt, inspect
	KeyLabel      string    `json:"key,omitempty"`
	Purpose       string    `json:"purpose,omitempty"`
	Fields        []string  `json:"fields,omitempty"` // names of the fields disclosed
	EndUser       EndUser   `json:"end_user,omitzero"`
	KeyVersion    int       `json:"key_version,omitempty"`   // version of the key used, when one was
	CourtOrder    string    `json:"court_order,omitempty"`   // authorized_by: the court order id of an audit decrypt
	OrderVersion  int       `json:"order_version,omitempty"` // the order's Vault KV version
	DocumentHash  string    `json:"document_hash,omitempty"` // hash of the order document, as Vault holds it
	UseNumber     int       `json:"use_number,omitempty"`    // which use of the order this was (1-based)
	Outcome       Outcome   `json:"outcome"`
	Code          string    `json:"code,omitempty"`   // the API error code when not allowed
	Detail        string    `json:"detail,omitempty"` // daemon events (start, stop, policy reload): what happened; never a secret
	// Clipped names the members Normalize cut to their limits ("transaction_id",
	// "end_user.user_agent", "participants", …, in member order): the entry
	// is not verbatim there. Each clipped string ends with ClipMarker and its
	// original size; a clipped list ends with an item saying how many were cut.
	Clipped []string `json:"clipped,omitempty"`
}

// Recorder records entries. Record returns nil only once the entry is kept;
// on error the caller must refuse the operation.
type Recorder interface {
	Record(ctx context.Context, e Entry) error
}

// Starter is a Recorder that can queue an entry now and be waited for later
// (Log.Start), so that the entry's commit overlaps the caller's work.
type Starter interface {
	Recorder
	Start(ctx context.Context, e Entry) (wait func() error)
}

// SlogRecorder writes entries to a slog.Logger at Info level.
type SlogRecorder struct{ Log *slog.Logger }

// Record logs e. It never fails.
func (r SlogRecorder) Record(ctx context.Context, e Entry) error {
	r.Log.LogAttrs(ctx, slog.LevelInfo, "access",
		slog.String("op", e.Operation),
		slog.String("outcome", string(e.Outcome)),
		slog.String("code", e.Code),
		slog.String("principal", e.Principal),
		slog.Uint64("uid", uint64(e.Caller.UID)),
		slog.Uint64("gid", uint64(e.Caller.GID)),
		slog.Int("pid", int(e.Caller.PID)),
		slog.String("exe", e.Caller.Executable),
		slog.String("transaction_id", e.TransactionID),
		slog.String("job_id", e.JobID),
		slog.String("participant", e.Participant),
		slog.Any("participants", e.Participants),
		slog.String("sealed_by", e.SealedBy),
		slog.String("key", e.KeyLabel),
		slog.String("purpose", e.Purpose),
		slog.Any("fields", e.Fields),
		slog.String("end_user_ip", e.EndUser.IP),
		slog.String("end_user_agent", e.EndUser.UserAgent),
		slog.String("request_id", e.EndUser.RequestID),
	)
	return nil
}
