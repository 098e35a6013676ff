// Binary ocicache pulls, caches and unpacks the OCI images nodes boot, and serves them as a registry.
package main

import (
	"context"

	"github.com/ociboot/ociboot/appliance/service"
)

func main() {
	service.Main("ocicache", ":9050", func(ctx context.Context, env *service.Env) error {
		env.SetStatus(func() any {
			return map[string]any{"service": "ocicache", "mode": env.Config.Mode, "interface": env.Config.Interface}
		})
		<-ctx.Done()
		return ctx.Err()
	})
}
