package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func withStatus(section string) string {
	return `{"version": 1, "purposes": [` + stdPurposes + `], "participant_status": ` + section +
		`, "principals": [{"name": "c", "users": ["root"], "roles": ["compliance"]}]}`
}

func TestParticipantStatusSection(t *testing.T) {
	t.Parallel()
	p := mustParse(t, withStatus(`{"seal": {"sanctions": "clear"}, "decrypt": {"kyb": "verified"},
	  "purposes": [{"purpose": "settlement", "kyc": "verified", "regulatory_approval": ["CH", "EU"]}]}`))
	if s := p.SealStatus(); !s.SanctionsClear || s.KYC || s.KYB {
		t.Fatalf("seal %+v", s)
	}
	if d := p.DecryptStatus("settlement"); !d.KYC || !d.KYB || d.SanctionsClear || !slices.Equal(d.Approval, []string{"CH", "EU"}) {
		t.Fatalf("settlement %+v", d)
	}
	if d := p.DecryptStatus("dispute"); d.KYC || !d.KYB {
		t.Fatalf("dispute %+v", d)
	}
	if err := p.Authorize(Principal{Name: "c"}, PermStatusWrite); err != nil {
		t.Fatal(err)
	}
	if err := p.Authorize(Principal{Name: "c"}, PermDecrypt); !errors.Is(err, ErrDenied) {
		t.Fatalf("compliance may not decrypt: %v", err)
	}
	none := mustParse(t, doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin"]}`))
	if s := none.DecryptStatus("settlement"); s.KYC || s.SanctionsClear || len(s.Approval) != 0 {
		t.Fatalf("no section: %+v", s)
	}
	if err := none.Authorize(Principal{Name: "a"}, PermStatusWrite); !errors.Is(err, ErrDenied) {
		t.Fatalf("admin may not set status: %v", err)
	}
	if err := none.Authorize(Principal{Name: "a"}, PermStatusRead); err != nil {
		t.Fatalf("admin may read status: %v", err)
	}
}

func TestParticipantStatusErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ section, want string }{
		{`{"seal": {"kyc": "pending"}}`, `participant_status.seal.kyc: "pending"`},
		{`{"seal": {"sanctions": "hit"}}`, `participant_status.seal.sanctions`},
		{`{"seal": {"suspended": false}}`, `participant_status.seal.suspended: unknown field`},
		{`{"purposes": [{"purpose": "marketing", "kyc": "verified"}]}`, `unknown purpose "marketing"`},
		{`{"purposes": [{"purpose": "settlement"}, {"purpose": "settlement"}]}`, `has an entry already`},
		{`{"decrypt": {"regulatory_approval": ["*", "CH"]}}`, `must be the only entry`},
		{`{"decrypt": {"regulatory_approval": ["ch"]}}`, `ISO 3166`},
		{`{"other": {}}`, `participant_status.other: unknown field`},
		{`[]`, `participant_status: must be an object`},
	} {
		_, err := Parse([]byte(withStatus(tc.section)))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.section, err, tc.want)
		}
	}
}

func TestSecondFactorSection(t *testing.T) {
	t.Parallel()
	js := `{"version": 1, "purposes": [` + stdPurposes + `], "second_factor": {"audit_decrypt": true, "decrypt_purposes": ["dispute"]},
	  "principals": [{"name": "a", "users": ["root"], "roles": ["admin"]}]}`
	p := mustParse(t, js)
	if !p.FactorForAudit() || !p.FactorForDecrypt("dispute") || p.FactorForDecrypt("settlement") {
		t.Fatalf("audit %v dispute %v settlement %v", p.FactorForAudit(), p.FactorForDecrypt("dispute"), p.FactorForDecrypt("settlement"))
	}
	if err := p.Authorize(Principal{Name: "a"}, PermMFAAdmin); err != nil {
		t.Fatal(err)
	}
	none := mustParse(t, doc(stdPurposes, `{"name": "a", "users": ["root"], "roles": ["admin"]}`))
	if none.FactorForAudit() || none.FactorForDecrypt("dispute") {
		t.Fatal("no section asks for a factor")
	}
	for sec, want := range map[string]string{
		`{"audit_decrypt": "yes"}`:         "must be a boolean",
		`{"decrypt_purposes": ["nosuch"]}`: `unknown purpose "nosuch"`,
		`{"routes": []}`:                   "unknown field",
	} {
		_, err := Parse([]byte(strings.Replace(js, `{"audit_decrypt": true, "decrypt_purposes": ["dispute"]}`, sec, 1)))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", sec, err, want)
		}
	}
}
