"""The sound-event taxonomy of the embedded corpus: which class each Debian clip belongs to.

Rules map a clip's origin (folder and file name inside its package, or OpenSFX's human caption) to
sound-event labels, a noun phrase for captions ("footsteps on gravel") and a broad source group
(for "what kind of source" questions). Clips no rule claims keep no label; `AMBIENCE` rules mark
quiet atmospheres that the scene composer may use as unlabeled background.

This module holds data and pure string functions only: it must never read audio or touch disk.
"""
from __future__ import annotations

import re

# Broad source group of every class (MMAU's "Acoustic Source Inference" asks for these).
CLASS_GROUPS: dict[str, str] = {
    "footsteps": "a person moving",
    "woman screaming": "a human voice",
    "man screaming": "a human voice",
    "speech": "a human voice",
    "monster growl": "a creature",
    "animal": "an animal",
    "fire": "nature",
    "water": "nature",
    "wind": "nature",
    "thunder": "nature",
    "gunshot": "a weapon",
    "laser shot": "a weapon",
    "explosion": "a weapon",
    "gun reload": "a weapon",
    "impact": "an object",
    "glass breaking": "an object",
    "wood breaking": "an object",
    "door": "an object",
    "whoosh": "an object",
    "engine": "a vehicle",
    "aircraft": "a vehicle",
    "train": "a vehicle",
    "horn": "a vehicle",
    "machinery": "a machine",
    "electric sparks": "a machine",
    "robot": "a machine",
    "click": "an electronic device",
    "beep": "an electronic device",
    "drums": "a musical instrument",
    "tabla": "a musical instrument",
    "bass": "a musical instrument",
    "synth blip": "a musical instrument",
    "bell": "a musical instrument",
    "music": "a musical instrument",
}

AMBIENCE = "ambience"  # pseudo-label: background-only clip, never an event label

# (regex on "folder/name" inside the ufoai zip, labels, phrase). First match wins; "{1}" is group 1.
_WORDS = {"open": "opening", "close": "closing"}  # "{1}" captures that need rewording
UFOAI_RULES: list[tuple[str, list[str], str]] = [
    (r"footsteps/(splash|water_in|water_out)\d*$", ["footsteps"], "footsteps splashing through water"),
    (r"footsteps/water_under$", ["water"], "water gurgling"),
    (r"footsteps/hitground\d*$", ["impact"], "a body hitting the ground"),
    (r"footsteps/(crouch|stand)$", ["footsteps"], "someone shuffling their feet"),
    (r"footsteps/([a-z]+?)\d*$", ["footsteps"], "footsteps on {1}"),
    (r"ambience/(fire\d*|smallfire|firesoft)$", ["fire"], "a crackling fire"),
    (r"weapons/flamer-\w+$", ["fire"], "a roaring flamethrower"),
    (r"ambience/(water\d*|waterfontain)$", ["water"], "running water"),
    (r"ambience/alienbase-bubbles$", ["water"], "bubbling liquid"),
    (r"ambience/thunder\d*$", ["thunder"], "thunder"),
    (r"ambience/arcticwind$", ["wind"], "howling wind"),
    (r"ambience/cricket_loop$", ["animal"], "crickets chirping"),
    (r"ambience/(alienmachinery\d*|alienpowermachinery\d*|machine1|minepump03|alien-generator|alien-device"
     r"|alien-ventilation|wind_turbine|steam|engine_alien_\w+|alien_engine)$", ["machinery"], "machinery humming"),
    (r"ambience/(sparks|sparks_short)$", ["electric sparks"], "electric sparks crackling"),
    (r"misc/(breakelectric\d*|electro)$", ["electric sparks"], "electric sparks crackling"),
    (r"weapons/electro-taser\w*$", ["electric sparks"], "an electric taser zapping"),
    (r"ambience/(disco|jingle\d*)$", ["music"], "a short piece of music"),
    (r"ambience/(hum\d*|droning_\w+|alienatmo|ufo_night_atm|city_abnd_ufoai_atm|sand-city|lights_loop"
     r"|alienwormhole|alienenergy\d*|aliencom|tv_static)$", [AMBIENCE], "a low ambient hum"),
    (r"ambience/bloodspiderwalk$", ["monster growl"], "a creature scuttling"),
    (r"(ambience/creak|doors/creak\w*)$", ["door"], "a door creaking"),
    (r"doors/door\d-(open|close)$", ["door"], "a door {1}"),
    (r"doors/open_close$", ["door"], "a door opening and closing"),
    (r"(civilians|soldiers)/(civ)?fem\w+$", ["woman screaming"], "a woman crying out in pain"),
    (r"(civilians|soldiers)/(civ)?male\w+$", ["man screaming"], "a man crying out in pain"),
    (r"aliens/\w+/(attack|move\d*)$", ["monster growl"], "a creature growling"),
    (r"aliens/\w+/(die|hurt)\d*$", ["monster growl"], "a creature shrieking"),
    (r"weapons/bullet-\w+-\d+x$", ["gunshot"], "a burst of gunfire"),
    (r"weapons/(bullet-\w+|grenade-launcher(-\d+x)?|ugv-cannon-fire)$", ["gunshot"], "a gunshot"),
    (r"geoscape/combat-gun$", ["gunshot"], "a burst of gunfire"),
    (r"weapons/explosion\w*(-\w+)?$", ["explosion"], "an explosion"),
    (r"geoscape/(combat-explosion|combat-rocket-exp)$", ["explosion"], "an explosion"),
    (r"weapons/(laser-\w+|plasma-(small|medium|large|huge|hoverheavy)|ptl-\w+|ugv-lasercannon-fire)$", ["laser shot"],
     "a laser blast"),
    (r"geoscape/combat-air(laser|plasma)[\w-]*$", ["laser shot"], "a laser blast"),
    (r"weapons/(reload-\w+|grenade-pin)$", ["gun reload"], "a gun being reloaded"),
    (r"weapons/(melee-\w+)$", ["whoosh"], "a swoosh through the air"),
    (r"seq/sword-fly$", ["whoosh"], "a swoosh through the air"),
    (r"(impact/[\w-]+|weapons/grenade-bounce|seq/sword-hit)$", ["impact"], "an object hitting a surface"),
    (r"misc/breakglass\d*$", ["glass breaking"], "glass shattering"),
    (r"misc/breakwood\d*$", ["wood breaking"], "wood splintering"),
    (r"misc/breakmetal\d*$", ["impact"], "metal crashing"),
    (r"ugv/diesel-(idle|move|stop)$", ["engine"], "a diesel engine"),
    (r"ugv/hover-(idle|move|stop)$", ["machinery"], "a hovering machine humming"),
    (r"seq/(alien|human)flyby$", ["aircraft"], "an aircraft flying past"),
    (r"ui/(click\w*|item-drag|item-drop)$", ["click"], "a click"),
    (r"ui/beep\d*$", ["beep"], "a short beep"),
    (r"geoscape/(basealert|ufospotted|newmission|info|mail|promotion|standard|ufolost|build-place|alien-activity)$",
     ["beep"], "an electronic alert tone"),
    (r"misc/(popup|lobbyprivmsg|roundstart)$", ["beep"], "an electronic alert tone"),
]

# (regex on the OpenSFX caption title, labels). The human caption itself is the phrase.
OPENSFX_RULES: list[tuple[str, list[str]]] = [
    (r"^unused", []),
    (r"^(good|bad) year$", ["music"]),
    (r"truck/old bus start, pull away with horn", ["engine", "horn"]),
    (r"(ship|ferry|car) horn|factory whistle", ["horn"]),
    (r"train station departure|steam engine going in tunnel", ["train"]),
    (r"level crossing", ["bell"]),
    (r"plane|jet take off|helicopter", ["aircraft"]),
    (r"(bus|truck)( start|/old bus start)", ["engine"]),
    (r"mining machinery|jackhammer|sawmill|building bridge|chainsaw|steam \(of steam engine\)", ["machinery"]),
    (r"falling tree|crashing tree", ["wood breaking"]),
    (r"crash|breakdown|splat", ["impact"]),
    (r"^explosion$", ["explosion"]),
    (r"^(beep|morse)$", ["beep"]),
    (r"^(sheep|cow|horse|bird|lion roar|monkeys)", ["animal"]),
    (r"bubble|plastic mine", ["water"]),
    (r"wind$", ["wind"]),
    (r"electric sparking", ["electric sparks"]),
]

# (regex on the sonic-pi sample name, labels, phrase).
SONICPI_RULES: list[tuple[str, list[str], str]] = [
    (r"^(bd_\w+|drum_bass_\w+|drum_heavy_kick|elec_soft_kick|elec_hollow_kick)$", ["drums"], "a kick drum hit"),
    (r"^(sn_\w+|drum_snare_\w+|elec_\w*snare|drum_roll)$", ["drums"], "a snare drum"),
    (r"^(drum_cymbal_\w+|drum_splash_\w+|elec_cymbal)$", ["drums"], "a cymbal crash"),
    (r"^(drum_tom_\w+|elec_fuzz_tom)$", ["drums"], "a tom drum hit"),
    (r"^(tabla_\w+|loop_tabla)$", ["tabla"], "a tabla"),
    (r"^(bass_\w+|glitch_bass_g)$", ["bass"], "a deep bass note"),
    (r"^loop_(amen\w*|breakbeat|compus|garzul|mika|perc\d|safari|industrial|electric|mehackit\d|weirdo)$", ["drums"],
     "a drum beat"),
    (r"^loop_3d_printer$", ["machinery"], "a machine whirring"),
    (r"^(elec_(bell|chime|bong|triangle)|perc_bell\d*|drum_cowbell)$", ["bell"], "a bell ringing"),
    (r"^(elec_\w+|glitch_perc\d)$", ["synth blip"], "a synthetic blip"),
    (r"^(glitch_robot\d|mehackit_robot\d)$", ["robot"], "a robotic voice"),
    (r"^mehackit_phone\d$", ["beep"], "an electronic phone beep"),
    (r"^(ambi_piano|ambi_choir)$", ["music"], "a short piece of music"),
    (r"^(ambi_swoosh|ambi_dark_woosh|perc_swash|perc_swoosh)$", ["whoosh"], "a whoosh"),
    (r"^(ambi_\w+|loop_drone_\w+|vinyl_hiss)$", [AMBIENCE], "a soft ambient drone"),
    (r"^misc_cineboom$", ["explosion"], "a deep boom"),
    (r"^misc_crow$", ["animal"], "a crow cawing"),
    (r"^perc_door$", ["door"], "a door knock"),
    (r"^perc_impact\d$", ["impact"], "a heavy impact"),
]

_UNCOUNTABLE = re.compile(r"^(wind|heavy wind|applause|steam|mining machinery|morse|electric sparking|sheep|monkeys|"
                          r"jackhammer|sawmill|building bridge)")


def _match(rules: list, key: str) -> tuple[list[str], str] | None:
    for rule in rules:
        m = re.search(rule[0], key)
        if m:
            phrase = rule[2] if len(rule) > 2 else ""
            if "{1}" in phrase:
                phrase = phrase.replace("{1}", _WORDS.get(m.group(1), m.group(1)))
            return list(rule[1]), phrase
    return None


def classify_ufoai(key: str) -> tuple[list[str], str]:
    """Labels and phrase of a ufoai clip from its path inside the zip, e.g. ``sound/footsteps/gravel1``."""
    key = key.removeprefix("sound/")
    return _match(UFOAI_RULES, key) or ([], key.rsplit("/", 1)[-1].replace("_", " "))


def classify_sonicpi(name: str) -> tuple[list[str], str]:
    """Labels and phrase of a sonic-pi sample from its file stem, e.g. ``tabla_na``."""
    return _match(SONICPI_RULES, name) or ([], name.replace("_", " "))


def opensfx_title(caption: str) -> str:
    """The quoted title of an OpenSFX caption, without game-world prefixes or numbering."""
    m = re.match(r'\s*"([^"]*)"', caption)
    title = m.group(1) if m else caption.split(".")[0]
    title = re.sub(r"^(Toyland|Tropical|Lumber mill):\s*", "", title)
    title = re.sub(r"\s*\(\d+\)$", "", title)
    return title.split(" | ")[0].strip()


def classify_opensfx(caption: str) -> tuple[list[str], str]:
    """Labels and phrase of an OpenSFX clip from its human caption (the phrase is the caption's title)."""
    title = opensfx_title(caption)
    low = title.lower()
    labels = next((list(lab) for pat, lab in OPENSFX_RULES if re.search(pat, low)), [])
    phrase = low if _UNCOUNTABLE.match(low) else ("an " if low[:1] in "aeiou" else "a ") + low
    return labels, phrase


def classify_speech(transcript: str) -> tuple[list[str], str]:
    """Asterisk prompts: spoken text is speech; bracketed transcripts (``[beep tone]``) are tones."""
    if transcript.startswith("["):
        return ["beep"], "an electronic tone"
    return ["speech"], f'a woman saying "{transcript}"'
