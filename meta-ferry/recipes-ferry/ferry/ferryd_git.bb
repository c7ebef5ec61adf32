# nooelint: oelint.var.bbclassextend
# (No BBCLASSEXTEND: the agent runs on the device only; ferry-native is the host command.)
SUMMARY = "Ferry's device agent"
DESCRIPTION = "ferryd fetches signed releases from a Ferry server, deploys them beside the \
               running one, switches atomically and rolls back a release that proves bad. With its systemd \
               units and /etc/ferry/ferryd.toml."
SECTION = "admin"

require ferry-source.inc
require ferry-crates.inc

SKIP_RECIPE[ferryd] = "${FERRY_SRCREV_UNSET}${@ferry_rust_too_old(d)}"

inherit cargo systemd useradd

# Only the agent. It must need neither clang nor RocksDB on the target: its local store is
# pure Rust. A Ferry commit from before that change still links RocksDB into ferryd; it then
# needs DEPENDS:append:pn-ferryd = " clang-native" and meta-clang (README).
CARGO_BUILD_FLAGS += "-p ferry-client --bin ferryd"

# /etc/ferry/ferryd.toml, written by do_ferryd_config from these variables (every key is
# documented in Ferry's client/src/config.rs), or FERRYD_CONFIG_FILE installed as it is.
FERRYD_SERVER ??= ""
FERRYD_INSECURE_HTTP ??= "0"
FERRYD_CHANNEL ??= ""
FERRYD_BRANCH ??= ""
FERRYD_STATE_DIR ??= "${localstatedir}/lib/ferry"
FERRYD_CURRENT_LINK ??= ""
FERRYD_HARDWARE ??= ""
FERRYD_BOOTLOADER ??= ""
FERRYD_UBOOT_FW_CONFIG ??= "${sysconfdir}/fw_env.config"
FERRYD_UBOOT_DEFENV ??= ""
FERRYD_GRUBENV ??= ""
# Files from a bbappend's SRC_URI, installed to /etc/ferry: the public keys (root keys
# with FERRYD_CHANNEL, commit keys with FERRYD_BRANCH), the fleet CA, or a whole config.
FERRYD_KEYS ??= ""
FERRYD_CA_FILE ??= ""
FERRYD_CONFIG_FILE ??= ""
FERRYD_LOCAL_UI_LISTEN ??= "192.168.4.1:80"

SRC_URI += "${@' '.join('file://' + f for f in d.expand('${FERRYD_KEYS} ${FERRYD_CA_FILE} ${FERRYD_CONFIG_FILE}').split())}"

# Writes the configuration to $1 from the shell variables FERRYD_* (do_ferryd_config sets
# them from BitBake's). POSIX sh, no BitBake expansion inside: scripts/check-yocto runs it
# outside BitBake and checks what it writes with the real `ferryd check-config`.
ferryd_write_config[doc] = "Writes ferryd.toml to $1 from the shell variables FERRYD_*"
ferryd_write_config() {
    out=$1
    if [ -z "$FERRYD_SERVER" ]; then
        bbfatal "ferryd: FERRYD_SERVER is not set: set it to the Ferry server's URL (https://...)"
    fi
    if [ -z "$FERRYD_CURRENT_LINK" ]; then
        bbfatal "ferryd: FERRYD_CURRENT_LINK is not set: set it to the symlink ferryd switches (e.g. /opt/app/current)"
    fi
    if [ -n "$FERRYD_CHANNEL" ] && [ -n "$FERRYD_BRANCH" ]; then
        bbfatal "ferryd: set FERRYD_CHANNEL or FERRYD_BRANCH, not both"
    fi
    if [ -z "$FERRYD_CHANNEL$FERRYD_BRANCH" ]; then
        bbfatal "ferryd: set FERRYD_CHANNEL (the signed channel to follow) or FERRYD_BRANCH (a branch head, development)"
    fi
    if [ -z "$FERRYD_KEYS" ]; then
        bbfatal "ferryd: FERRYD_KEYS is not set: name the public key files added to SRC_URI in a bbappend (root keys with FERRYD_CHANNEL, commit keys with FERRYD_BRANCH)"
    fi
    for v in "$FERRYD_SERVER" "$FERRYD_CHANNEL" "$FERRYD_BRANCH" "$FERRYD_STATE_DIR" \
        "$FERRYD_CURRENT_LINK" "$FERRYD_HARDWARE" "$FERRYD_KEYS" "$FERRYD_CA_FILE" \
        "$FERRYD_UBOOT_FW_CONFIG" "$FERRYD_UBOOT_DEFENV" "$FERRYD_GRUBENV"; do
        case $v in
        *'"'* | *\\*) bbfatal "ferryd: a FERRYD_* value contains a quote or a backslash: $v" ;;
        esac
    done
    keys=
    for k in $FERRYD_KEYS; do
        keys="$keys\"$FERRYD_KEYDIR/$k\", "
    done
    {
        echo "# Written at build time by meta-ferry's ferryd recipe from the FERRYD_* variables."
        echo "# Every key and its default: Ferry's client/src/config.rs."
        echo "server = \"$FERRYD_SERVER\""
        if [ "$FERRYD_INSECURE_HTTP" = 1 ]; then
            echo "insecure_http = true"
        fi
        if [ -n "$FERRYD_CA_FILE" ]; then
            echo "ca_file = \"$FERRYD_KEYDIR/$FERRYD_CA_FILE\""
        fi
        if [ -n "$FERRYD_CHANNEL" ]; then
            echo "channel = \"$FERRYD_CHANNEL\""
            echo "root_keys = [$keys]"
        else
            echo "branch = \"$FERRYD_BRANCH\""
            echo "trusted_keys = [$keys]"
        fi
        echo "state_dir = \"$FERRYD_STATE_DIR\""
        echo "current_link = \"$FERRYD_CURRENT_LINK\""
        if [ -n "$FERRYD_HARDWARE" ]; then
            echo "hardware = \"$FERRYD_HARDWARE\""
        fi
        case $FERRYD_BOOTLOADER in
        "") ;;
        uboot)
            echo
            echo "[bootloader]"
            echo "kind = \"uboot\""
            echo "fw_config = \"$FERRYD_UBOOT_FW_CONFIG\""
            if [ -n "$FERRYD_UBOOT_DEFENV" ]; then
                echo "defenv = \"$FERRYD_UBOOT_DEFENV\""
            fi
            ;;
        grub)
            if [ -z "$FERRYD_GRUBENV" ]; then
                bbfatal "ferryd: FERRYD_BOOTLOADER is grub: set FERRYD_GRUBENV to the GRUB environment block"
            fi
            echo
            echo "[bootloader]"
            echo "kind = \"grub\""
            echo "grubenv = \"$FERRYD_GRUBENV\""
            ;;
        *) bbfatal "ferryd: FERRYD_BOOTLOADER is \"$FERRYD_BOOTLOADER\": it must be empty (symlink only), uboot or grub" ;;
        esac
    } > "$out"
}

do_ferryd_config () {
    if [ -n "${FERRYD_CONFIG_FILE}" ]; then
        cp "${FERRY_UNPACKDIR}/${FERRYD_CONFIG_FILE}" "${WORKDIR}/ferryd.toml"
        return
    fi
    FERRYD_SERVER="${FERRYD_SERVER}"
    FERRYD_INSECURE_HTTP="${FERRYD_INSECURE_HTTP}"
    FERRYD_CHANNEL="${FERRYD_CHANNEL}"
    FERRYD_BRANCH="${FERRYD_BRANCH}"
    FERRYD_STATE_DIR="${FERRYD_STATE_DIR}"
    FERRYD_CURRENT_LINK="${FERRYD_CURRENT_LINK}"
    FERRYD_HARDWARE="${FERRYD_HARDWARE}"
    FERRYD_BOOTLOADER="${FERRYD_BOOTLOADER}"
    FERRYD_UBOOT_FW_CONFIG="${FERRYD_UBOOT_FW_CONFIG}"
    FERRYD_UBOOT_DEFENV="${FERRYD_UBOOT_DEFENV}"
    FERRYD_GRUBENV="${FERRYD_GRUBENV}"
    FERRYD_KEYS="${FERRYD_KEYS}"
    FERRYD_CA_FILE="${FERRYD_CA_FILE}"
    FERRYD_KEYDIR="${sysconfdir}/ferry"
    ferryd_write_config "${WORKDIR}/ferryd.toml"
}
addtask ferryd_config after do_unpack before do_configure
do_ferryd_config[doc] = "Writes ferryd.toml from the FERRYD_* variables (or takes FERRYD_CONFIG_FILE)"

do_install () {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/ferryd ${D}${bindir}/ferryd

    install -d ${D}${sysconfdir}/ferry
    install -m 0644 ${WORKDIR}/ferryd.toml ${D}${sysconfdir}/ferry/ferryd.toml
    for f in ${FERRYD_KEYS} ${FERRYD_CA_FILE}; do
        install -m 0644 ${FERRY_UNPACKDIR}/$f ${D}${sysconfdir}/ferry/$f
    done

    install -d ${D}${systemd_system_unitdir}
    for unit in ferryd.service ferryd-boot-check.service ferryd-local-ui.service ferryd-apply.service; do
        install -m 0644 ${S}/boot-integration/systemd/$unit ${D}${systemd_system_unitdir}/$unit
    done
    sed -i -e 's,/usr/bin/ferryd,${bindir}/ferryd,' \
        -e 's,/etc/ferry/ferryd.toml,${sysconfdir}/ferry/ferryd.toml,' \
        ${D}${systemd_system_unitdir}/ferryd*.service
    sed -i -e 's,--listen 192.168.4.1:80,--listen ${FERRYD_LOCAL_UI_LISTEN},' \
        ${D}${systemd_system_unitdir}/ferryd-local-ui.service
}

PACKAGES =+ "${PN}-local-ui"

SYSTEMD_PACKAGES = "${PN} ${PN}-local-ui"
SYSTEMD_SERVICE:${PN} = "ferryd.service ferryd-boot-check.service"
SYSTEMD_SERVICE:${PN}-local-ui = "ferryd-local-ui.service"

FILES:${PN}-local-ui += "${systemd_system_unitdir}/ferryd-local-ui.service ${systemd_system_unitdir}/ferryd-apply.service"
RDEPENDS:${PN}-local-ui = "${PN}"

# The page serves as ferry-ui once it has bound its port; ferryd-apply.service (root) installs
# its uploads through a socket of that user's group.
USERADD_PACKAGES = "${PN}-local-ui"
USERADD_PARAM:${PN}-local-ui = "--system --no-create-home --home-dir / --shell /sbin/nologin --user-group ferry-ui"

CONFFILES:${PN} = "${sysconfdir}/ferry/ferryd.toml"

# The bootloader's tools ferryd runs (libubootenv's fw_printenv/fw_setenv with the machine's
# /etc/fw_env.config from u-boot's -env package; grub-editenv).
RDEPENDS:${PN} += "${@{'uboot': 'u-boot-fw-utils u-boot-default-env', 'grub': 'grub-editenv'}.get(d.getVar('FERRYD_BOOTLOADER'), '')}"
