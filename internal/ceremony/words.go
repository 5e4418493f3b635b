package ceremony

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Words is the fixed list used to read fingerprints aloud: byte b of a
// fingerprint is Words[b]. It is the PGP word list's even-position column
// (two-syllable words, chosen by Juola and Zimmermann to be distinct when
// spoken); changing it changes every spoken fingerprint, so it is frozen.
// docs/ceremonies.md documents it.
var Words = [256]string{
	"aardvark", "absurd", "accrue", "acme", "adrift", "adult", "afflict", "ahead",
	"aimless", "algol", "allow", "alone", "ammo", "ancient", "apple", "artist",
	"assume", "athens", "atlas", "aztec", "baboon", "backfield", "backward", "banjo",
	"beaming", "bedlamp", "beehive", "beeswax", "befriend", "belfast", "berserk", "billiard",
	"bison", "blackjack", "blockade", "blowtorch", "bluebird", "bombast", "bookshelf", "brackish",
	"breadline", "breakup", "brickyard", "briefcase", "burbank", "button", "buzzard", "cement",
	"chairlift", "chatter", "checkup", "chisel", "choking", "chopper", "christmas", "clamshell",
	"classic", "classroom", "cleanup", "clockwork", "cobra", "commence", "concert", "cowbell",
	"crackdown", "cranky", "crowfoot", "crucial", "crumpled", "crusade", "cubic", "dashboard",
	"deadbolt", "deckhand", "dogsled", "dragnet", "drainage", "dreadful", "drifter", "dropper",
	"drumbeat", "drunken", "dupont", "dwelling", "eating", "edict", "egghead", "eightball",
	"endorse", "endow", "enlist", "erase", "escape", "exceed", "eyeglass", "eyetooth",
	"facial", "fallout", "flagpole", "flatfoot", "flytrap", "fracture", "framework", "freedom",
	"frighten", "gazelle", "geiger", "glitter", "glucose", "goggles", "goldfish", "gremlin",
	"guidance", "hamlet", "highchair", "hockey", "indoors", "indulge", "inverse", "involve",
	"island", "jawbone", "keyboard", "kickoff", "kiwi", "klaxon", "locale", "lockup",
	"merit", "minnow", "miser", "mohawk", "mural", "music", "necklace", "neptune",
	"newborn", "nightbird", "oakland", "obtuse", "offload", "optic", "orca", "payday",
	"peachy", "pheasant", "physique", "playhouse", "pluto", "preclude", "prefer", "preshrunk",
	"printer", "prowler", "pupil", "puppy", "python", "quadrant", "quiver", "quota",
	"ragtime", "ratchet", "rebirth", "reform", "regain", "reindeer", "rematch", "repay",
	"retouch", "revenge", "reward", "rhythm", "ribcage", "ringbolt", "robust", "rocker",
	"ruffled", "sailboat", "sawdust", "scallion", "scenic", "scorecard", "scotland", "seabird",
	"select", "sentence", "shadow", "shamrock", "showgirl", "skullcap", "skydive", "slingshot",
	"slowdown", "snapline", "snapshot", "snowcap", "snowslide", "solo", "southward", "soybean",
	"spaniel", "spearhead", "spellbind", "spheroid", "spigot", "spindle", "spyglass", "stagehand",
	"stagnate", "stairway", "standard", "stapler", "steamship", "sterling", "stockman", "stopwatch",
	"stormy", "sugar", "surmount", "suspense", "sweatband", "swelter", "tactics", "talon",
	"tapeworm", "tempest", "tiger", "tissue", "tonic", "topmost", "tracker", "transit",
	"trauma", "treadmill", "trojan", "trouble", "tumor", "tunnel", "tycoon", "uncut",
	"unearth", "unwind", "uproot", "upset", "upshot", "vapor", "village", "virus",
	"vulcan", "waffle", "wallet", "watchword", "wayside", "willow", "woodlark", "zulu",
}

// Fingerprint is SHA-256 of a public key (its encoding on the token: 65-byte
// P-256 point or 32 raw Ed25519 bytes), hex.
func Fingerprint(public []byte) string {
	h := sha256.Sum256(public)
	return hex.EncodeToString(h[:])
}

// FingerprintWords spells the 32 bytes of SHA-256(public) with Words, space-separated.
func FingerprintWords(public []byte) string {
	h := sha256.Sum256(public)
	w := make([]string, len(h))
	for i, b := range h {
		w[i] = Words[b]
	}
	return strings.Join(w, " ")
}
