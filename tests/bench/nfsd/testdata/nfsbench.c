/*
 * nfsbench: the libnfs client of tests/bench/nfsd. It uses only  libnfs's
 * synchronous API, one request in flight, as a simple single-threaded tool
 * would.
 *
 *   nfsbench read  URL [DIR]          walk DIR (default: the export's root)
 *                                     and read every file fully
 *   nfsbench untar URL DESTDIR TAR    create DESTDIR in the export and
 *                                     extract the ustar file TAR into it
 *
 * URL is nfs://127.0.0.1/export?nfsport=N&mountport=M&version=3. Both modes
 * print one line on stdout:
 *
 *   files=F dirs=D symlinks=S bytes=B hash=H seconds=T
 *
 * T is the wall time of the workload after the mount. For read, H is an
 * order-independent digest of the tree (sum over entries of FNV-1a 64 of
 * "d REL MODE", "f REL MODE\n" + contents, "l REL TARGET"; MODE in octal of
 * mode & 07777), which the Go test recomputes from the local tree. For untar
 * H is 0.
 *
 * Build: gcc -O2 -o nfsbench nfsbench.c -lnfs
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw-nfs.h>

static struct nfs_context *nfs;
static long long nfiles, ndirs, nsymlinks, nbytes;
static uint64_t hashsum;
static char *buf;
static uint64_t bufsize;

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "nfsbench: ");
	vfprintf(stderr, fmt, ap);
	if (nfs != NULL && nfs_get_error(nfs) != NULL)
		fprintf(stderr, ": %s", nfs_get_error(nfs));
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= FNV_PRIME;
	}
	return h;
}

/* rel is the path relative to the walk's start ("" for the start). */
static void walk(const char *path, const char *rel)
{
	struct nfsdir *dir;
	struct nfsdirent *ent;
	char p[4096], r[4096], s[8192];

	if (nfs_opendir(nfs, path, &dir) != 0)
		die("opendir %s", path);
	while ((ent = nfs_readdir(nfs, dir)) != NULL) {
		if (strcmp(ent->name, ".") == 0 || strcmp(ent->name, "..") == 0)
			continue;
		snprintf(p, sizeof p, "%s/%s", strcmp(path, "/") == 0 ? "" : path, ent->name);
		snprintf(r, sizeof r, "%s%s%s", rel, rel[0] ? "/" : "", ent->name);
		unsigned mode = ent->mode & 07777;
		switch (ent->type) {
		case NF3DIR: {
			int n = snprintf(s, sizeof s, "d %s %o", r, mode);
			hashsum += fnv(FNV_OFFSET, s, n);
			ndirs++;
			walk(p, r);
			break;
		}
		case NF3LNK: {
			char target[4096];
			memset(target, 0, sizeof target);
			if (nfs_readlink(nfs, p, target, sizeof target - 1) != 0)
				die("readlink %s", p);
			int n = snprintf(s, sizeof s, "l %s %s", r, target);
			hashsum += fnv(FNV_OFFSET, s, n);
			nsymlinks++;
			break;
		}
		case NF3REG: {
			struct nfsfh *fh;
			int n = snprintf(s, sizeof s, "f %s %o\n", r, mode);
			uint64_t h = fnv(FNV_OFFSET, s, n);
			if (nfs_open(nfs, p, O_RDONLY, &fh) != 0)
				die("open %s", p);
			for (;;) {
				int got = nfs_read(nfs, fh, bufsize, buf);
				if (got < 0)
					die("read %s", p);
				if (got == 0)
					break;
				h = fnv(h, buf, got);
				nbytes += got;
			}
			nfs_close(nfs, fh);
			hashsum += h;
			nfiles++;
			break;
		}
		default:
			die("%s: unexpected type %u", p, ent->type);
		}
	}
	nfs_closedir(nfs, dir);
}

static unsigned long long octal(const char *p, size_t n)
{
	unsigned long long v = 0;
	for (size_t i = 0; i < n && p[i] != 0; i++) {
		if (p[i] == ' ')
			continue;
		if (p[i] < '0' || p[i] > '7')
			die("bad octal field in tar header");
		v = v * 8 + (p[i] - '0');
	}
	return v;
}

/* Copies a NUL-padded tar field of at most n bytes. */
static void field(char *dst, const char *src, size_t n)
{
	memcpy(dst, src, n);
	dst[n] = 0;
}

struct dirmode {
	char *path;
	int mode;
};

static void untar(const char *dest, const char *tarpath)
{
	int fd = open(tarpath, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0)
		die("open %s: %s", tarpath, strerror(errno));
	const char *tar = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (tar == MAP_FAILED)
		die("mmap %s: %s", tarpath, strerror(errno));
	uint64_t wmax = nfs_get_writemax(nfs);
	struct dirmode *dirs = NULL;
	size_t ndm = 0, cap = 0;

	/* Start as tar does: create the target directory, umask 0 so that
	 * the modes given to CREATE and MKDIR are taken as they are. */
	nfs_umask(nfs, 0);
	if (nfs_mkdir2(nfs, dest, 0755) != 0)
		die("mkdir %s", dest);

	for (off_t off = 0; off + 512 <= st.st_size;) {
		const char *h = tar + off;
		char name[101], prefix[156], link[101], path[4096];
		if (h[0] == 0)
			break; /* end-of-archive block */
		if (memcmp(h + 257, "ustar", 5) != 0)
			die("not a ustar header at offset %lld", (long long)off);
		field(name, h, 100);
		field(prefix, h + 345, 155);
		field(link, h + 157, 100);
		int mode = octal(h + 100, 8) & 07777;
		unsigned long long size = octal(h + 124, 12);
		char type = h[156];
		const char *data = h + 512;
		off += 512 + (size + 511) / 512 * 512;
		if (off > st.st_size)
			die("truncated tar");

		char full[512];
		snprintf(full, sizeof full, "%s%s%s", prefix, prefix[0] ? "/" : "", name);
		char *n = full;
		while (strncmp(n, "./", 2) == 0)
			n += 2;
		size_t l = strlen(n);
		while (l > 0 && n[l - 1] == '/')
			n[--l] = 0;
		if (l == 0)
			continue;
		snprintf(path, sizeof path, "%s/%s", dest, n);

		switch (type) {
		case '5':
			/* Like tar: make it writable now, give it its mode at
			 * the end, deepest first. */
			if (nfs_mkdir2(nfs, path, 0700) != 0)
				die("mkdir %s", path);
			if (ndm == cap) {
				cap = cap ? 2 * cap : 256;
				dirs = realloc(dirs, cap * sizeof *dirs);
			}
			dirs[ndm].path = strdup(path);
			dirs[ndm].mode = mode;
			ndm++;
			ndirs++;
			break;
		case '0':
		case 0: {
			struct nfsfh *fh;
			if (nfs_creat(nfs, path, 0600, &fh) != 0)
				die("creat %s", path);
			for (unsigned long long done = 0; done < size;) {
				uint64_t c = size - done;
				if (c > wmax)
					c = wmax;
				int w = nfs_write(nfs, fh, c, data + done);
				if (w <= 0)
					die("write %s", path);
				done += w;
			}
			if (nfs_close(nfs, fh) != 0)
				die("close %s", path);
			if (nfs_chmod(nfs, path, mode) != 0)
				die("chmod %s", path);
			nfiles++;
			nbytes += size;
			break;
		}
		case '2':
			if (nfs_symlink(nfs, link, path) != 0)
				die("symlink %s -> %s", path, link);
			nsymlinks++;
			break;
		default:
			die("%s: tar type %c not supported", path, type);
		}
	}
	for (size_t i = ndm; i-- > 0;) {
		if (nfs_chmod(nfs, dirs[i].path, dirs[i].mode) != 0)
			die("chmod %s", dirs[i].path);
		free(dirs[i].path);
	}
	free(dirs);
}

int main(int argc, char **argv)
{
	if (argc < 3 || (strcmp(argv[1], "read") != 0 && strcmp(argv[1], "untar") != 0) ||
	    (strcmp(argv[1], "untar") == 0 && argc != 5)) {
		fprintf(stderr, "usage: nfsbench read URL [DIR] | nfsbench untar URL DESTDIR TAR\n");
		return 2;
	}
	nfs = nfs_init_context();
	if (nfs == NULL)
		die("nfs_init_context failed");
	struct nfs_url *url = nfs_parse_url_dir(nfs, argv[2]);
	if (url == NULL)
		die("parse %s", argv[2]);
	if (nfs_mount(nfs, url->server, url->path) != 0)
		die("mount %s:%s", url->server, url->path);

	double t0 = now();
	if (strcmp(argv[1], "read") == 0) {
		bufsize = nfs_get_readmax(nfs);
		if (bufsize == 0 || bufsize > (64 << 20))
			bufsize = 1 << 20;
		buf = malloc(bufsize);
		walk(argc > 3 ? argv[3] : "/", "");
	} else {
		untar(argv[3], argv[4]);
	}
	double t1 = now();

	printf("files=%lld dirs=%lld symlinks=%lld bytes=%lld hash=%016" PRIx64 " seconds=%.6f\n",
	       nfiles, ndirs, nsymlinks, nbytes, hashsum, t1 - t0);
	nfs_umount(nfs);
	nfs_destroy_url(url);
	nfs_destroy_context(nfs);
	return 0;
}
