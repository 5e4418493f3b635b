package ceremony_test

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/ceremony"
)

func FuzzParseShare(f *testing.F) {
	f.Add(ceremony.Share{BackupID: strings.Repeat("ab", 16), Index: 2, Threshold: 3, Total: 5, Officer: "o2", Value: make([]byte, 32)}.Text())
	f.Add(ceremony.Share{Kind: ceremony.SOPINShare, BackupID: strings.Repeat("cd", 16), Index: 1, Threshold: 2, Total: 2, Officer: "o1", Value: make([]byte, 32)}.Text())
	f.Add([]byte("custody-share v1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ceremony.ParseShare(b)
		if err != nil {
			return
		}
		if string(s.Text()) != string(b) {
			t.Fatalf("share does not re-encode to its input")
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Add(ceremony.Request{ID: strings.Repeat("ab", 16), Kind: "backup", Params: map[string]string{"threshold": "3"},
		Nonce: strings.Repeat("cd", 32), Requester: "o1", Quorum: 3, NotBefore: now, NotAfter: now.Add(time.Hour)}.Canonical())
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ceremony.ParseRequest(s)
		if err == nil && r.Canonical() != s {
			t.Fatal("request does not re-encode to its input")
		}
	})
}

func FuzzParseTranscript(f *testing.F) {
	f.Add("custody ceremony transcript v1\nkind backup\nrequest a b\ntime 2026-01-01T00:00:00Z\ntoken 1 custody\nparticipant o1 requester\noutput f 00\nkcv 010203\ndeviation none really\n")
	f.Fuzz(func(t *testing.T, s string) {
		tr, err := ceremony.ParseTranscript(s)
		if err != nil {
			return
		}
		if _, err := tr.Text(); err != nil {
			t.Fatalf("parsed transcript does not encode: %v", err)
		}
	})
}

func FuzzParseSOPINRecord(f *testing.F) {
	f.Add([]byte(`{"format":"custody-so-pin v1","set_id":"` + strings.Repeat("ab", 16) + `","created":"2026-01-01T00:00:00Z","token_label":"custody","token_serial":"1","split_alg":"shamir-gf256-0x11b","share_alg":"age-x25519","threshold":2,"total":2,"shares":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ceremony.ParseSOPINRecord(b)
		if err != nil {
			return
		}
		if _, err := ceremony.ParseSOPINRecord(r.Marshal()); err != nil {
			t.Fatalf("SO PIN record does not round-trip: %v", err)
		}
	})
}

func FuzzOpenManifest(f *testing.F) {
	f.Add([]byte("custody backup manifest v2\n{}\n\n\u2014 custody.test/log AAAA\n"))
	f.Add([]byte(`{"format":"custody-backup v1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, _, err := ceremony.OpenManifest(b, note.VerifierList()); err == nil {
			t.Fatalf("a manifest opened with no trusted signer: %+v", m)
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"format":"custody-backup v1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ceremony.ParseManifest(b)
		if err != nil {
			return
		}
		if _, err := ceremony.ParseManifest(m.Marshal()); err != nil {
			t.Fatalf("manifest does not round-trip: %v", err)
		}
	})
}
