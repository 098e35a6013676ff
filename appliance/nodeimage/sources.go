package nodeimage

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Mirrors are the Debian archive and security archive a build downloads
// packages from.
type Mirrors struct {
	Archive  string // e.g. the URI of "deb <URI> bookworm main"
	Security string // the URI of "<suite>-security"; "" for none
}

// HostMirrors reads the Debian mirrors this machine's apt uses (one-line
// sources.list files and deb822 .sources files), so a build fetches from
// wherever this machine is set up to fetch, proxies included.
func HostMirrors(aptDir string) (Mirrors, error) {
	if aptDir == "" {
		aptDir = "/etc/apt"
	}
	files := []string{filepath.Join(aptDir, "sources.list")}
	for _, pat := range []string{"*.list", "*.sources"} {
		m, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", pat))
		files = append(files, m...)
	}
	var m Mirrors
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var entries []aptEntry
		if strings.HasSuffix(f, ".sources") {
			entries = deb822(string(b))
		} else {
			entries = oneLine(string(b))
		}
		for _, e := range entries {
			if !e.deb || !e.hasComponent("main") {
				continue
			}
			for _, s := range e.suites {
				switch {
				case strings.HasSuffix(s, "-security") && m.Security == "":
					m.Security = e.uri
				case !strings.Contains(s, "-") && debianSuite(s) && m.Archive == "":
					m.Archive = e.uri
				}
			}
		}
	}
	if m.Archive == "" {
		return m, fmt.Errorf("nodeimage: no Debian archive (a \"deb <uri> bookworm main\" entry) in %s/sources.list*; pass -mirror with the URI of a Debian mirror", aptDir)
	}
	return m, nil
}

func debianSuite(s string) bool {
	switch s {
	// Codenames only: vendors name their own suites "stable".
	case "unstable", "sid", "bullseye", "bookworm", "trixie", "forky", "duke":
		return true
	}
	return false
}

type aptEntry struct {
	deb        bool
	uri        string
	suites     []string
	components []string
}

func (e aptEntry) hasComponent(c string) bool {
	for _, x := range e.components {
		if x == c {
			return true
		}
	}
	return false
}

func oneLine(s string) []aptEntry {
	var out []aptEntry
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], "[") { // [arch=... signed-by=...]
			i := 1
			for i < len(f) && !strings.HasSuffix(f[i], "]") {
				i++
			}
			f = append(f[:1], f[min(i+1, len(f)):]...)
		}
		if len(f) < 4 {
			continue
		}
		out = append(out, aptEntry{deb: f[0] == "deb", uri: f[1], suites: f[2:3], components: f[3:]})
	}
	return out
}

func deb822(s string) []aptEntry {
	var out []aptEntry
	for _, para := range strings.Split(strings.ReplaceAll(s, "\r", ""), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(para, "\n") {
			if strings.HasPrefix(line, "#") || !strings.Contains(line, ":") {
				continue
			}
			k, v, _ := strings.Cut(line, ":")
			fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
		if fields["enabled"] == "no" {
			continue
		}
		for _, uri := range strings.Fields(fields["uris"]) {
			out = append(out, aptEntry{
				deb:        strings.Contains(" "+fields["types"]+" ", " deb "),
				uri:        uri,
				suites:     strings.Fields(fields["suites"]),
				components: strings.Fields(fields["components"]),
			})
		}
	}
	return out
}
