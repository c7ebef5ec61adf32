# ferry_commit: commits an image's root file system to a Ferry repository at build time,
# signed, as one release (the OSTree-style flow: the image is the release).
#
#   inherit ferry_commit          (in the image recipe, or IMAGE_CLASSES += "ferry_commit")
#   FERRY_REPO = "/srv/ferry/repo"          required: made by `ferry init` (or FERRY_REPO_CREATE)
#   FERRY_SIGN_KEY = "/secure/ci.key"       required: from `ferry keygen`; never in the layer
#   FERRY_VERSION = "1.4.0"                 required: a number or a semantic version that grows
#                                           with every release (devices never go backwards)
#
# do_ferry_commit runs after do_image, before do_image_complete, under pseudo (so owners
# are the image's, not the builder's), and writes the commit id to IMGDEPLOYDIR as
# IMAGE_NAME.ferry-commit. `ferry commit` is idempotent: the same tree with the same
# metadata is the same commit, and writes nothing. An image restored from sstate builds no
# root file system, so nothing is committed: `bitbake -C rootfs IMAGE` commits again.

# The `ferry` command: a host binary, or else ferry-native built by the layer.
FERRY_NATIVE_BIN ??= ""
DEPENDS += "${@'' if d.getVar('FERRY_NATIVE_BIN') else 'ferry-native'}"
FERRY_CMD = "${@d.getVar('FERRY_NATIVE_BIN') or 'ferry'}"

FERRY_REPO ??= ""
FERRY_SIGN_KEY ??= ""
FERRY_VERSION ??= ""
FERRY_BRANCH ??= "${MACHINE}"
FERRY_SUBJECT ??= "${IMAGE_BASENAME} ${FERRY_VERSION} for ${MACHINE}"
# KEY=VALUE pairs, separated by spaces (no spaces inside), recorded in the commit.
FERRY_META ??= "image=${IMAGE_BASENAME} machine=${MACHINE} distro=${DISTRO} distro-version=${DISTRO_VERSION}"
# The hardware revisions the release is built for, separated by spaces: needed for
# channels (ferry promote), which install a commit only on the revisions it names.
FERRY_HARDWARE ??= ""
# "1": `ferry init` the repository first (nothing happens to one made with the defaults).
FERRY_REPO_CREATE ??= "0"
FERRY_COMMIT_ID_FILE ??= "${IMGDEPLOYDIR}/${IMAGE_NAME}.ferry-commit"

# The task's shell. It reads only shell variables (do_ferry_commit sets them from BitBake's)
# and uses no BitBake expansion, so scripts/check-yocto runs it outside BitBake on a fake
# image directory with the real `ferry`. POSIX sh: BitBake runs tasks with /bin/sh.
ferry_commit_rootfs[doc] = "The shell of do_ferry_commit, runnable outside BitBake"
ferry_commit_rootfs() {
    if [ -z "$FERRY_REPO" ]; then
        bbfatal "ferry-commit: FERRY_REPO is not set: set it to the Ferry repository the image is committed to (made once with ferry init, or set FERRY_REPO_CREATE = \"1\")"
    fi
    if [ -z "$FERRY_SIGN_KEY" ]; then
        bbfatal "ferry-commit: FERRY_SIGN_KEY is not set: set it to the secret key file from ferry keygen that signs the image's commit"
    fi
    if [ ! -f "$FERRY_SIGN_KEY" ]; then
        bbfatal "ferry-commit: FERRY_SIGN_KEY is $FERRY_SIGN_KEY, which is not a file"
    fi
    if [ -z "$FERRY_VERSION" ]; then
        bbfatal "ferry-commit: FERRY_VERSION is not set: set it to the release's version, a number (42) or a semantic version (1.4.0) that grows with every release"
    fi
    if [ -z "$FERRY_BRANCH" ]; then
        bbfatal "ferry-commit: FERRY_BRANCH is empty"
    fi
    if [ ! -d "$IMAGE_ROOTFS" ]; then
        bbfatal "ferry-commit: the root file system $IMAGE_ROOTFS is not a directory"
    fi
    # A device whose ferryd is told to use U-Boot needs fw_env.config to reach the
    # environment: a release without it could never finish its trial.
    if [ -f "$IMAGE_ROOTFS$FERRY_SYSCONFDIR/ferry/ferryd.toml" ] &&
        grep -q '^kind = "uboot"' "$IMAGE_ROOTFS$FERRY_SYSCONFDIR/ferry/ferryd.toml" &&
        [ ! -f "$IMAGE_ROOTFS$FERRY_SYSCONFDIR/fw_env.config" ]; then
        bbfatal "ferry-commit: ferryd.toml says kind = \"uboot\" but the image has no $FERRY_SYSCONFDIR/fw_env.config: the machine's u-boot bbappend must provide it (meta-ferry/README.md)"
    fi
    if [ "$FERRY_REPO_CREATE" = 1 ]; then
        "$FERRY_CMD" init --repo "$FERRY_REPO" ||
            bbfatal "ferry-commit: ferry init --repo $FERRY_REPO failed"
    fi
    set -- --repo "$FERRY_REPO" --branch "$FERRY_BRANCH" --tree "$IMAGE_ROOTFS" \
        --version "$FERRY_VERSION" --sign-key "$FERRY_SIGN_KEY" --subject "$FERRY_SUBJECT"
    set -f
    for m in $FERRY_META; do
        set -- "$@" --meta "$m"
    done
    for h in $FERRY_HARDWARE; do
        set -- "$@" --hardware "$h"
    done
    set +f
    bbnote "ferry-commit: $FERRY_CMD commit $*"
    # The id is the last line of stdout; the summary goes to stderr (the task's log).
    out=$("$FERRY_CMD" commit "$@") ||
        bbfatal "ferry-commit: ferry commit of $IMAGE_ROOTFS to $FERRY_REPO failed (its error is above)"
    id=$(printf '%s\n' "$out" | tail -n 1)
    if [ -n "$FERRY_COMMIT_ID_FILE" ]; then
        printf '%s\n' "$id" > "$FERRY_COMMIT_ID_FILE"
    fi
    bbnote "ferry-commit: $FERRY_BRANCH $FERRY_VERSION is commit $id"
}

do_ferry_commit () {
    export FERRY_CMD="${FERRY_CMD}"
    export FERRY_REPO="${FERRY_REPO}"
    export FERRY_SIGN_KEY="${FERRY_SIGN_KEY}"
    export FERRY_VERSION="${FERRY_VERSION}"
    export FERRY_BRANCH="${FERRY_BRANCH}"
    export FERRY_SUBJECT="${FERRY_SUBJECT}"
    export FERRY_META="${FERRY_META}"
    export FERRY_HARDWARE="${FERRY_HARDWARE}"
    export FERRY_REPO_CREATE="${FERRY_REPO_CREATE}"
    export FERRY_COMMIT_ID_FILE="${FERRY_COMMIT_ID_FILE}"
    export IMAGE_ROOTFS="${IMAGE_ROOTFS}"
    export FERRY_SYSCONFDIR="${sysconfdir}"
    ferry_commit_rootfs
}
addtask ferry_commit after do_image before do_image_complete
do_ferry_commit[doc] = "Commits IMAGE_ROOTFS to FERRY_REPO, signed with FERRY_SIGN_KEY"
# Under pseudo, with the image's own database: the tree is committed with its real owners.
do_ferry_commit[fakeroot] = "1"
do_ferry_commit[dirs] = "${IMGDEPLOYDIR}"
# One commit at a time from this build directory: two images may share a repository.
do_ferry_commit[lockfiles] = "${TMPDIR}/ferry-commit.lock"
