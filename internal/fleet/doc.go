// Package fleet holds the tests of a custody fleet: several custodyd
// processes on one SoftHSM token directory (the stand-in for a network HSM
// partition) behind one 3-node Vault cluster with integrated storage, all
// started by scripts/fleet.sh exactly as an operator would (docs/fleet.md).
//
// The package has no code of its own: what makes a fleet correct lives
// where it belongs (internal/keys rereads the token on a miss and claims
// rotations; internal/orders grants the leases and counts order uses with
// check-and-set). The tests drive real daemons through their real sockets
// and kill real processes; they need root (as the rest of the suite),
// softhsm2 and the cached Vault binary (make deps).
package fleet
