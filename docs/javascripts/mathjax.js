// MathJax configuration for pymdownx.arithmatex (generic mode). MathJax itself is shipped with
// the site (javascripts/vendor/mathjax, see SOURCES.txt there) and typesets the page it is
// loaded on by itself.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// Material's document$ emits once per loaded page, and again for each page that instant
// navigation swaps in. Only the latter need typesetting here: re-typesetting the first page
// after clearing MathJax's cache, while its own first typeset runs, left every formula blank.
let crossentFirstPage = true;
document$.subscribe(() => {
  if (crossentFirstPage) {
    crossentFirstPage = false;
    return;
  }
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
