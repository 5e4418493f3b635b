package policy

import (
	"slices"
	"strings"

	"custody/internal/compliance"
)

// The compliance permissions (kept here, beside the section they belong
// to; permRoles gets them in init).
const (
	PermStatusRead  Permission = "participants.status.read"  // compliance, admin: a participant's compliance status
	PermStatusWrite Permission = "participants.status.write" // compliance: set it (docs/compliance.md)
	PermMFAAdmin    Permission = "mfa.admin"                 // admin: enroll, confirm, list and revoke principals' second factors
	PermMFASelf     Permission = "mfa.self"                  // every known principal: start its own enrollment (unusable until an admin confirms)
)

func init() {
	permRoles[PermStatusRead] = []string{RoleCompliance, RoleAdmin}
	permRoles[PermStatusWrite] = []string{RoleCompliance}
	permRoles[PermMFAAdmin] = []string{RoleAdmin}
	permRoles[PermMFASelf] = nil
}

// statusRules is the policy's "participant_status" section: what a
// participant's compliance status must be to be sealed for (seal) and to
// decrypt as it (decrypt, for every purpose, merged with the purpose's own
// entry). Without the section only suspension refuses. A suspended
// participant is refused for both whatever the section says; audit
// decrypts under a court order are never gated by status.
type statusRules struct {
	seal     compliance.Requirement
	decrypt  compliance.Requirement
	purposes map[string]compliance.Requirement
}

// SealStatus is the status a participant needs to be sealed for
// (compliance.Check decides it). The server asks it only when status
// checks are on.
func (p *Policy) SealStatus() compliance.Requirement {
	if p == nil || p.status == nil {
		return compliance.Requirement{}
	}
	return p.status.seal
}

// DecryptStatus is the status the participant an application acts as
// needs to decrypt for purpose: the section's "decrypt" merged with the
// purpose's entry.
func (p *Policy) DecryptStatus(purpose string) compliance.Requirement {
	if p == nil || p.status == nil {
		return compliance.Requirement{}
	}
	return p.status.decrypt.Merge(p.status.purposes[purpose])
}

// participantStatus parses the optional "participant_status" section:
//
//	"participant_status": {
//	  "seal":    {"sanctions": "clear"},
//	  "decrypt": {"sanctions": "clear"},
//	  "purposes": [{"purpose": "settlement", "kyc": "verified"}]
//	}
func (c *checker) participantStatus(root *node, p *Policy) {
	sec := root.field("participant_status")
	if sec == nil {
		return
	}
	const path = "participant_status"
	if !c.object(sec, path, "comment", "seal", "decrypt", "purposes") {
		return
	}
	c.str(sec, path, "comment", false)
	rules := &statusRules{purposes: map[string]compliance.Requirement{}}
	if n := sec.field("seal"); n != nil {
		rules.seal = c.requirement(n, path+".seal")
	}
	if n := sec.field("decrypt"); n != nil {
		rules.decrypt = c.requirement(n, path+".decrypt")
	}
	elems, _ := c.array(sec, path, "purposes", false)
	for i, e := range elems {
		ep := joinIndex(path+".purposes", i)
		name, ok := c.str(e, ep, "purpose", true)
		if !ok {
			continue
		}
		if _, known := p.purposes[name]; !known {
			c.errf(joinKey(ep, "purpose"), "unknown purpose %q", name)
			continue
		}
		if _, dup := rules.purposes[name]; dup {
			c.errf(joinKey(ep, "purpose"), "purpose %q has an entry already", name)
			continue
		}
		rules.purposes[name] = c.requirement(e, ep, "purpose")
	}
	p.status = rules
}

// requirement parses a requirement object: "kyc": "verified",
// "kyb": "verified", "sanctions": "clear", "regulatory_approval": a list
// of jurisdictions (or ["*"]). extra are further keys the caller reads.
func (c *checker) requirement(n *node, path string, extra ...string) compliance.Requirement {
	var r compliance.Requirement
	if !c.object(n, path, append([]string{"comment", "kyc", "kyb", "sanctions", "regulatory_approval"}, extra...)...) {
		return r
	}
	c.str(n, path, "comment", false)
	for key, dst := range map[string]*bool{"kyc": &r.KYC, "kyb": &r.KYB} {
		if v, ok := c.str(n, path, key, false); ok {
			if v != compliance.Verified {
				c.errf(joinKey(path, key), "%q: the one requirement is %q", v, compliance.Verified)
			}
			*dst = true
		}
	}
	if v, ok := c.str(n, path, "sanctions", false); ok {
		if v != compliance.SanctionsClear {
			c.errf(joinKey(path, "sanctions"), "%q: the one requirement is %q", v, compliance.SanctionsClear)
		}
		r.SanctionsClear = true
	}
	js, jpaths := c.strs(n, path, "regulatory_approval", false)
	for i, j := range js {
		switch {
		case j == "*" && len(js) > 1:
			c.errf(jpaths[i], `"*" (any jurisdiction) must be the only entry`)
		case j != "*" && (len(j) < 2 || len(j) > 7 || strings.ToUpper(j) != j || strings.ContainsFunc(j, func(r rune) bool {
			return !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-')
		})):
			c.errf(jpaths[i], "%q: want an ISO 3166 code such as CH, EU or US-NY, or \"*\"", j)
		}
	}
	r.Approval = slices.Clone(js)
	return r
}
