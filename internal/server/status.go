package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/compliance"
	"custody/internal/envelope"
)

// StatusStore keeps participants' compliance status (*compliance.Store in
// the daemon, on Vault). Status is the cached read of every check: it
// returns the record (nil: none) or an error matching
// compliance.ErrUnavailable, and must fail closed (no copy older than its
// staleness bound). Get reads Vault itself; Put writes with check-and-set
// and returns compliance.ErrConflict when cas is not the current version.
type StatusStore interface {
	Status(ctx context.Context, id string) (*compliance.Record, error)
	Get(ctx context.Context, id string) (*compliance.Stored, int, error)
	Put(ctx context.Context, id string, doc compliance.Stored, cas int) (int, error)
	Describe() string
}

// statusOff is what health and the status routes say without a StatusStore.
const statusOff = "off: participant status is not checked (no vault section in the configuration, or participant_status.enabled false)"

// checkStatus decides req for participant id when status checks are on:
// nil, a compliance refusal (ErrSuspended, ErrSanctions, ErrKYC,
// ErrApproval) or compliance.ErrUnavailable. Expiry dates are judged by
// the server's clock.
func (s *Server) checkStatus(ctx context.Context, id string, req compliance.Requirement) error {
	if s.d.Status == nil {
		return nil
	}
	rec, err := s.d.Status.Status(ctx, id)
	if err != nil {
		s.d.Log.Warn("participant status unavailable: refusing", "participant", id, "err", err)
		return err
	}
	return compliance.Check(id, rec, req, s.d.Now())
}

func (s *Server) statusStore() (StatusStore, error) {
	if s.d.Status == nil {
		return nil, errorf(http.StatusServiceUnavailable, api.CodeStatusUnavailable, "%s", statusOff)
	}
	return s.d.Status, nil
}

// showStatus: GET /v1/participants/{id}/status, read from Vault.
func (s *Server) showStatus(ctx context.Context, rq *request) (any, error) {
	id := rq.PathValue("id")
	entry := auditlog.Entry{Operation: "participant.status", Participant: id}
	out, err := s.readStatus(ctx, id)
	if err == nil {
		entry.Detail = fmt.Sprintf("read version %d", out.Version)
	}
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	return out, err
}

func (s *Server) readStatus(ctx context.Context, id string) (*api.ParticipantStatus, error) {
	if err := envelope.ValidateID(id); err != nil {
		return nil, invalidID("id", err)
	}
	st, err := s.statusStore()
	if err != nil {
		return nil, err
	}
	doc, version, err := st.Get(ctx, id)
	out := &api.ParticipantStatus{ID: id, Version: version}
	if errors.Is(err, compliance.ErrInvalid) {
		out.Invalid = err.Error()
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	if doc != nil {
		raw, err := json.Marshal(doc.Status)
		if err != nil {
			return nil, err
		}
		updated := doc.Updated
		out.Status, out.Updated, out.By, out.Reason, out.Reference = raw, &updated, doc.By, doc.Reason, doc.Reference
	}
	return out, nil
}

// setStatus: PUT /v1/participants/{id}/status {"version","status","reason","reference"}
// replaces the whole record if version is current. The entry names the
// participant, the old and new versions, the reason and the reference —
// never the record itself.
func (s *Server) setStatus(ctx context.Context, rq *request) (any, error) {
	id := rq.PathValue("id")
	entry := auditlog.Entry{Operation: "participant.status.set", Participant: id}
	out, err := s.writeStatus(ctx, rq, id, &entry)
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	return out, err
}

func (s *Server) writeStatus(ctx context.Context, rq *request, id string, entry *auditlog.Entry) (*api.StatusSet, error) {
	if err := envelope.ValidateID(id); err != nil {
		return nil, invalidID("id", err)
	}
	var in api.StatusChange
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	entry.Detail = fmt.Sprintf("version %d -> ?; reason %q; reference %q", in.Version, clip(in.Reason), clip(in.Reference))
	if len(in.Status) == 0 {
		return nil, badRequest("status: required (the whole record; docs/compliance.md)")
	}
	rec, err := compliance.ParseRecord(in.Status)
	if err != nil {
		return nil, badRequest("status: %v", err)
	}
	if err := compliance.ValidateChange(in.Reason, in.Reference); err != nil {
		return nil, badRequest("%v", err)
	}
	if in.Version < 0 {
		return nil, badRequest("version: %d, want the version you read (0: none yet)", in.Version)
	}
	st, err := s.statusStore()
	if err != nil {
		return nil, err
	}
	version, err := st.Put(ctx, id, compliance.Stored{Status: rec, Updated: s.d.Now().UTC(), By: rq.principal.Name,
		Reason: in.Reason, Reference: in.Reference}, in.Version)
	if err != nil {
		return nil, err
	}
	entry.Detail = fmt.Sprintf("version %d -> %d; reason %q; reference %q", in.Version, version, in.Reason, in.Reference)
	return &api.StatusSet{ID: id, Version: version, PreviousVersion: in.Version}, nil
}
