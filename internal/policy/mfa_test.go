package policy

import (
	"errors"
	"strings"
	"testing"
)

// factorPolicy asks for a factor on every audit decrypt and ceremony
// approval, on dispute decrypts, and per principal: everything "night"
// does, and "app"'s settlement decrypts and rewraps.
const factorPolicy = `{"version": 1, "purposes": [` + stdPurposes + `],
  "second_factor": {"audit_decrypt": true, "decrypt_purposes": ["dispute"], "operations": ["ceremony.approve"],
    "principals": [
      {"principal": "night", "operations": ["*"]},
      {"principal": "app", "decrypt_purposes": ["settlement"], "operations": ["rewrap"], "comment": "c"}
    ]},
  "principals": [
    {"name": "app", "users": ["root"], "roles": ["application"], "act_as": [{"participants": ["*"], "purposes": ["settlement", "dispute"]}]},
    {"name": "night", "users": ["daemon"], "roles": ["admin", "auditor"]},
    {"name": "other", "groups": ["adm"], "roles": ["officer", "application"]}
  ]}`

func TestNeedsFactor(t *testing.T) {
	t.Parallel()
	p := mustParse(t, factorPolicy)
	app, night, other := Principal{Name: "app"}, Principal{Name: "night"}, Principal{Name: "other"}
	for _, tc := range []struct {
		pr          Principal
		op, purpose string
		want        bool
	}{
		{other, "audit-decrypt", "", true},
		{other, "ceremony.approve", "", true},
		{other, "ceremony.request", "", false},
		{other, "decrypt", "dispute", true},
		{other, "decrypt", "settlement", false},
		{other, "decrypt", "", false},
		{other, "rewrap", "", false},
		{app, "decrypt", "settlement", true},
		{app, "decrypt", "", false},
		{app, "rewrap", "", true},
		{app, "encrypt", "", false},
		{night, "keys", "", true},
		{night, "mfa.confirm", "", true},
		{night, "decrypt", "settlement", true},
		{night, "health", "", false},          // never
		{night, "mfa.self-enroll", "", false}, // never: it is how a factor is got
		{night, "no-such-op", "", false},
		{Principal{Name: "nobody"}, "rewrap", "", false},
	} {
		if got := p.NeedsFactor(tc.pr, tc.op, tc.purpose); got != tc.want {
			t.Errorf("%s %s %q: %v, want %v", tc.pr.Name, tc.op, tc.purpose, got, tc.want)
		}
	}
	if !p.FactorForAudit() || !p.FactorForDecrypt("dispute") || p.FactorForDecrypt("settlement") {
		t.Fatal("section-wide requirements")
	}
	var none *Policy
	if none.NeedsFactor(app, "audit-decrypt", "") {
		t.Fatal("nil policy")
	}
	if err := p.Authorize(Principal{Name: "other"}, PermMFASelf); err != nil {
		t.Fatalf("every principal may start its own enrollment: %v", err)
	}
}

func TestSecondFactorSectionErrors(t *testing.T) {
	t.Parallel()
	sec := `{"audit_decrypt": true, "decrypt_purposes": ["dispute"], "operations": ["ceremony.approve"],
    "principals": [
      {"principal": "night", "operations": ["*"]},
      {"principal": "app", "decrypt_purposes": ["settlement"], "operations": ["rewrap"], "comment": "c"}
    ]}`
	if !strings.Contains(factorPolicy, sec) {
		t.Fatal("test policy changed")
	}
	for bad, want := range map[string]string{
		`{"operations": ["ceremony.aprove"]}`:                           `unknown operation "ceremony.aprove"`,
		`{"operations": ["health"]}`:                                    `unknown operation "health"`,
		`{"operations": ["mfa.self-enroll"]}`:                           `unknown operation "mfa.self-enroll"`,
		`{"operations": ["*", "keys"]}`:                                 `must be the only entry`,
		`{"operations": []}`:                                            `must not be empty`,
		`{"principals": [{"principal": "ghost", "operations": ["*"]}]}`: `unknown principal "ghost"`,
		`{"principals": [{"principal": "app"}]}`:                        `asks for nothing`,
		`{"principals": [{"principal": "app", "operations": ["keys"]}, {"principal": "app", "operations": ["rewrap"]}]}`: `two entries`,
		`{"principals": [{"principal": "app", "decrypt_purposes": ["x"]}]}`:                                              `unknown purpose "x"`,
		`{"principals": [{"principal": "app", "routes": ["x"]}]}`:                                                        `unknown field`,
		`{"principals": [{"operations": ["keys"]}]}`:                                                                     `principal: required`,
	} {
		_, err := Parse([]byte(strings.Replace(factorPolicy, sec, bad, 1)))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", bad, err, want)
		}
	}
}
