package compliance_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"custody/internal/compliance"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func at(s string) *time.Time {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic(err)
	}
	return &t
}

func good() *compliance.Record {
	return &compliance.Record{
		KYC:                &compliance.Verification{State: compliance.Verified, Expires: at("2027-06-30")},
		KYB:                &compliance.Verification{State: compliance.Verified, Expires: at("2027-06-30")},
		RegulatoryApproval: &compliance.Approval{Jurisdiction: "CH", Reference: "FINMA-2026-114", Expires: *at("2027-12-31")},
		Sanctions:          compliance.SanctionsClear,
		Flags:              []string{"pep"},
	}
}

func TestCheck(t *testing.T) {
	all := compliance.Requirement{KYC: true, KYB: true, SanctionsClear: true, Approval: []string{"CH", "EU"}}
	for _, tc := range []struct {
		name string
		rec  func(r *compliance.Record) *compliance.Record
		req  compliance.Requirement
		want error
	}{
		{"all met", func(r *compliance.Record) *compliance.Record { return r }, all, nil},
		{"no record, nothing asked", func(*compliance.Record) *compliance.Record { return nil }, compliance.Requirement{}, nil},
		{"no record, sanctions asked", func(*compliance.Record) *compliance.Record { return nil }, compliance.Requirement{SanctionsClear: true}, compliance.ErrSanctions},
		{"no record, kyc asked", func(*compliance.Record) *compliance.Record { return nil }, compliance.Requirement{KYC: true}, compliance.ErrKYC},
		{"no record, approval asked", func(*compliance.Record) *compliance.Record { return nil }, compliance.Requirement{Approval: []string{"*"}}, compliance.ErrApproval},
		{"suspended refuses even when nothing is asked", func(r *compliance.Record) *compliance.Record {
			r.Suspended, r.SuspendedReason = true, "fraud review"
			return r
		}, compliance.Requirement{}, compliance.ErrSuspended},
		{"suspended comes first", func(r *compliance.Record) *compliance.Record {
			r.Suspended, r.SuspendedReason, r.Sanctions = true, "x", compliance.SanctionsHit
			return r
		}, all, compliance.ErrSuspended},
		{"hit", func(r *compliance.Record) *compliance.Record { r.Sanctions = compliance.SanctionsHit; return r }, all, compliance.ErrSanctions},
		{"hit not asked", func(r *compliance.Record) *compliance.Record { r.Sanctions = compliance.SanctionsHit; return r }, compliance.Requirement{KYC: true}, nil},
		{"kyc pending", func(r *compliance.Record) *compliance.Record { r.KYC.State = compliance.Pending; return r }, all, compliance.ErrKYC},
		{"kyc past expiry", func(r *compliance.Record) *compliance.Record { r.KYC.Expires = at("2026-11-25"); return r }, all, compliance.ErrKYC},
		{"kyb expired", func(r *compliance.Record) *compliance.Record { r.KYB.State = compliance.Expired; return r }, all, compliance.ErrKYC},
		{"kyb not asked", func(r *compliance.Record) *compliance.Record { r.KYB = nil; return r }, compliance.Requirement{KYC: true}, nil},
		{"approval expired", func(r *compliance.Record) *compliance.Record {
			r.RegulatoryApproval.Expires = *at("2026-01-01")
			return r
		}, all, compliance.ErrApproval},
		{"approval elsewhere", func(r *compliance.Record) *compliance.Record { r.RegulatoryApproval.Jurisdiction = "US-NY"; return r }, all, compliance.ErrApproval},
		{"approval any", func(r *compliance.Record) *compliance.Record { r.RegulatoryApproval.Jurisdiction = "US-NY"; return r }, compliance.Requirement{Approval: []string{"*"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := compliance.Check("miner-1", tc.rec(good()), tc.req, now)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Check = %v, want %v", err, tc.want)
			}
			if err != nil && !errors.Is(err, compliance.ErrRefused) {
				t.Fatalf("%v does not match ErrRefused", err)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	a := compliance.Requirement{KYC: true, Approval: []string{"CH", "EU"}}
	b := compliance.Requirement{SanctionsClear: true, Approval: []string{"EU"}}
	m := a.Merge(b)
	if !m.KYC || !m.SanctionsClear || m.KYB || len(m.Approval) != 1 || m.Approval[0] != "EU" {
		t.Fatalf("%+v", m)
	}
	if m := a.Merge(compliance.Requirement{Approval: []string{"US"}}); compliance.Check("p", good(), m, now) == nil {
		t.Fatalf("disjoint jurisdictions %v must match nothing", m.Approval)
	}
	if m := a.Merge(compliance.Requirement{Approval: []string{"*"}}); len(m.Approval) != 2 {
		t.Fatalf("%v", m.Approval)
	}
}

func TestParseRecord(t *testing.T) {
	raw, _ := json.Marshal(good())
	if _, err := compliance.ParseRecord(raw); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		`{"kyc":{"state":"verified"}}`,
		`{"kyc":{"state":"ok","expires":"2027-01-01T00:00:00Z"}}`,
		`{"sanctions":"maybe"}`,
		`{"suspended":true}`,
		`{"suspended_reason":"x"}`,
		`{"suspended":true,"suspended_reason":"\u001b[2J"}`,
		`{"suspended":true,"suspended_reason":"a\u202eb"}`,
		`{"flags":["PEP"]}`,
		`{"flags":["a","a"]}`,
		`{"regulatory_approval":{"jurisdiction":"ch","reference":"r","expires":"2027-01-01T00:00:00Z"}}`,
		`{"regulatory_approval":{"jurisdiction":"CH","reference":"","expires":"2027-01-01T00:00:00Z"}}`,
		`{"regulatory_approval":{"jurisdiction":"CH","reference":"r"}}`,
		`{"unknown":1}`,
		`{} {}`,
		`[]`,
		``,
	} {
		if _, err := compliance.ParseRecord([]byte(bad)); !errors.Is(err, compliance.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", bad, err)
		}
	}
}

func TestParseStoredNamesParticipant(t *testing.T) {
	doc := compliance.Stored{Format: 1, Participant: "miner-1", Status: *good(), Updated: now, By: "compliance", Reason: "annual review", Reference: "CASE-1"}
	raw, _ := json.Marshal(doc)
	if _, err := compliance.ParseStored(raw, "miner-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := compliance.ParseStored(raw, "miner-2"); !errors.Is(err, compliance.ErrInvalid) {
		t.Fatalf("a document copied under another id: %v", err)
	}
}

// FuzzParseStored: never panics; what it accepts encodes and parses again
// to the same document.
func FuzzParseStored(f *testing.F) {
	doc := compliance.Stored{Format: 1, Participant: "miner-1", Status: *good(), Updated: now, By: "compliance", Reason: "annual review", Reference: "CASE-1"}
	raw, _ := json.Marshal(doc)
	f.Add(raw)
	susp := doc
	susp.Status = compliance.Record{Suspended: true, SuspendedReason: "fraud review"}
	raw, _ = json.Marshal(susp)
	f.Add(raw)
	for _, s := range []string{`{}`, `{"format":1,"participant":"miner-1"}`, `{"format":2}`, `null`, `{"status":{"kyc":null}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := compliance.ParseStored(data, "miner-1")
		if err != nil {
			if !errors.Is(err, compliance.ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		again, _ := json.Marshal(st)
		st2, err := compliance.ParseStored(again, "miner-1")
		if err != nil {
			t.Fatalf("re-encoded document refused: %v\n%s", err, again)
		}
		b2, _ := json.Marshal(st2)
		if string(b2) != string(again) {
			t.Fatalf("not stable:\n%s\n%s", again, b2)
		}
	})
}

// FuzzParseRecord: never panics; errors match ErrInvalid.
func FuzzParseRecord(f *testing.F) {
	raw, _ := json.Marshal(good())
	f.Add(raw)
	f.Add([]byte(`{"suspended":true,"suspended_reason":"x"}`))
	f.Add([]byte(`{"kyc":{"state":"pending"},"flags":["a","b"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := compliance.ParseRecord(data); err != nil && !errors.Is(err, compliance.ErrInvalid) {
			t.Fatal(err)
		}
	})
}
