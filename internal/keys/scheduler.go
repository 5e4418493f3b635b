package keys

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"custody/internal/auditlog"
)

// Scheduler is the daemon's own rotation pass: it rotates every participant
// key whose active version is due (Registry.Due) and records each rotation
// as a decision of the daemon through the record function it was given
// (custodyd passes Server.RecordDaemon, so that daemon decisions take the
// same recording path as callers' ones). It is safe for concurrent use.
type Scheduler struct {
	keys   *Registry
	now    func() time.Time
	log    *slog.Logger
	record DaemonRecorder
}

// DaemonRecorder records e, a decision the daemon took on its own; err nil
// means it succeeded. A non-nil answer means the access log refused it.
type DaemonRecorder func(ctx context.Context, e auditlog.Entry, err error) error

// NewScheduler builds the rotation pass over r; now nil = time.Now.
func NewScheduler(r *Registry, now func() time.Time, log *slog.Logger, record DaemonRecorder) *Scheduler {
	if now == nil {
		now = time.Now
	}
	return &Scheduler{keys: r, now: now, log: log, record: record}
}

// RotateDue rotates every participant key due now, logs each rotation and
// records it (operation "key.rotate", detail "due for rotation", the new
// version's label and number). It returns how many keys were rotated and
// the first error; one failure does not stop the others. If the access log
// refuses an entry, the pass stops. In a fleet (a coordinator set) a key
// another daemon is rotating (ErrRotationBusy) or has just rotated is
// skipped without an entry: that daemon records it.
func (s *Scheduler) RotateDue(ctx context.Context) (int, error) {
	n := 0
	var first error
	for _, id := range s.keys.Due(s.now()) {
		v, rotated, err := s.keys.RotateIfDue(ctx, id, s.now())
		if errors.Is(err, ErrRotationBusy) || (err == nil && !rotated) {
			s.log.Debug("due key rotated by another daemon", "participant", id)
			continue
		}
		e := auditlog.Entry{Operation: "key.rotate", Participant: id, Detail: "due for rotation"}
		if err != nil {
			s.log.Error("due rotation failed", "participant", id, "err", err)
			if first == nil {
				first = err
			}
		} else {
			e.KeyLabel, e.KeyVersion = v.Label, int(v.Number)
			s.log.Info("rotated a due key", "participant", id, "label", v.Label)
			n++
		}
		if rerr := s.record(ctx, e, err); rerr != nil {
			s.log.Error("access log refused a rotation entry; stopping the rotation pass", "err", rerr)
			return n, errors.Join(first, rerr)
		}
	}
	return n, first
}

// Run runs RotateDue now and then every interval until ctx ends.
func (s *Scheduler) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.RotateDue(ctx); err != nil {
			s.log.Warn("rotation pass finished with errors", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
