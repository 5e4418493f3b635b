// Package auditlog records every access decision custodyd makes.
//
// Today the only Recorder writes each Entry as one structured slog line. The
// access-log issue replaces it with an append-only, tamper-evident log whose
// Record returns only once the entry is durable; callers are already written
// for that contract: they call Record before releasing any result and refuse
// the operation when Record fails.
//
// An Entry never holds plaintext values, PINs, DEKs or key material: field
// names yes, their values no.
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
	KeyLabel      string    `json:"key,omitempty"`
	Purpose       string    `json:"purpose,omitempty"`
	Fields        []string  `json:"fields,omitempty"` // names of the fields disclosed
	EndUser       EndUser   `json:"end_user,omitzero"`
	Outcome       Outcome   `json:"outcome"`
	Code          string    `json:"code,omitempty"` // the API error code when not allowed
}

// Recorder records entries. Record returns nil only once the entry is kept;
// on error the caller must refuse the operation.
type Recorder interface {
	Record(ctx context.Context, e Entry) error
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
		slog.String("key", e.KeyLabel),
		slog.String("purpose", e.Purpose),
		slog.Any("fields", e.Fields),
		slog.String("end_user_ip", e.EndUser.IP),
		slog.String("end_user_agent", e.EndUser.UserAgent),
		slog.String("request_id", e.EndUser.RequestID),
	)
	return nil
}
