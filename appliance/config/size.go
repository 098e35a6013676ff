package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?) ?([KMGTkmgt]?)(iB|B)?$`)

// ParseSize reads a size such as "10G", "512M", "1.5T", "10GiB" or a plain
// number of bytes. Units are powers of 1024, as df -h and du -h print
// them; "B" or "iB" after the unit mean the same.
func ParseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil || m[2] == "" && m[3] == "iB" {
		return 0, fmt.Errorf("%q is not a size such as \"10G\", \"512M\" or \"1.5T\" (units K, M, G, T are powers of 1024)", s)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size: %v", s, err)
	}
	shift := map[string]uint{"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[strings.ToLower(m[2])]
	v := f * float64(int64(1)<<shift)
	if v >= math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is too large for a size", s)
	}
	return int64(v), nil
}
